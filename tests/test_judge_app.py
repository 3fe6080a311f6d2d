"""The LLM judge in the app (clo.app.ui.judging): an admin's job over the stored battles, the background judge after
every vote, who may start it, what the Leaderboard and `python -m clo leaderboard --judge` show. The judge is the
scripted OpenAI-compatible server of test_judge on loopback (and the app a real `python app.py` in one test).

    python -m pytest -q tests/test_judge_app.py
"""

import threading
import time

import pytest
from conftest import FAKE, GOOD, Judge, free_port

from clo import CLOError
from clo.app.access import Access
from clo.evaluate.judge.background import Judging
from clo.evaluate.judge.run import battle_items


def vote_battles(store, n: int, language: str = "ko", tag: str = "", blind: bool = True) -> list[dict]:
    """n battles between clo-ko (its answer carries the word the scripted judge prefers) and sft-ko, each voted by
    its own person for clo-ko; returns the reveals."""
    reveals = []
    for i in range(n):
        voter = f"person-{tag}{i}"
        b = store.create_battle(voter=voter, language=language, prompt=f"질문 {tag}{i}",
                                answers={"clo-ko": f"{GOOD} answer {i}", "sft-ko": f"plain answer {i}"},
                                hashes={"clo-ko": "c1", "sft-ko": "s1"}, engine="peft", blind=blind)
        clo_left = b.answer_a.startswith(GOOD)
        reveals.append(store.vote(b.id, "a" if clo_left else "b", voter=voter))
    return reveals


def judge_rows(store):
    votes = store.votes()
    return votes[votes["judge"].notna()]


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def finished(judging: Judging) -> bool:
    return judging.state()["status"] in ("done", "failed")


# ---- what is judged ----

def test_battle_items_are_the_peoples_blind_battles_once_each(store, scripted):
    vote_battles(store, 3)
    vote_battles(store, 1, tag="named-", blind=False)  # a named side-by-side vote: not a battle to judge
    vote_battles(store, 2, language="de", tag="de-")
    # a second person voting on the very same answers: one pair to judge
    again = store.create_battle(voter="someone", language="ko", prompt="질문 0",
                                answers={"clo-ko": f"{GOOD} answer 0", "sft-ko": "plain answer 0"},
                                hashes={"clo-ko": "c1", "sft-ko": "s1"}, engine="peft")
    store.vote(again.id, "tie", voter="someone")
    items = battle_items(store.votes())
    assert len(items) == 5 and len({i.key for i in items}) == 5
    assert [i.language for i in battle_items(store.votes(), "de")] == ["de", "de"]
    first = next(i for i in items if i.prompt == "질문 0")
    assert first.answers == {"clo-ko": f"{GOOD} answer 0", "sft-ko": "plain answer 0"} or \
        first.answers == {"sft-ko": "plain answer 0", "clo-ko": f"{GOOD} answer 0"}
    assert first.hashes == {"clo-ko": "c1", "sft-ko": "s1"} and first.engine == "peft"
    # judge votes are never items: judging the items adds none
    judging = Judging(store, Access(False), scripted.url, FAKE, background=False)
    judging.start("admin")
    wait_for(lambda: finished(judging))
    assert len(battle_items(store.votes())) == 5


# ---- an admin's job ----

def test_an_admins_job_judges_every_stored_battle_once_and_only_admins_may_start_it(store, scripted):
    vote_battles(store, 6)
    access = Access(demo_mode=True, password="pw")
    judging = Judging(store, access, background=False)  # no judge configured: the admin gives one
    assert not judging.configured and judging.public_line() == ""
    with pytest.raises(CLOError, match="admin password"):
        judging.start("visitor", scripted.url, FAKE)
    assert scripted.state["requests"] == 0 and judge_rows(store).empty
    access.unlock("admin", "pw")
    with pytest.raises(CLOError, match="URL and model"):
        judging.start("admin")
    judging.start("admin", scripted.url, FAKE, language="ko")
    wait_for(lambda: finished(judging))
    s = judging.state()
    assert (s["status"], s["judged"], s["done"], s["total"], s["trigger"]) == ("done", 6, 6, 6, "admin")
    rows = judge_rows(store)
    assert len(rows) == 6 and set(rows["judge"]) == {FAKE}
    assert all((rows["variant_a"] == "clo-ko") == (rows["outcome"] == "a"))  # the judge prefers clo-ko every time
    assert "**Done:** judged (ko)" in judging.describe() and "6 judged now" in judging.describe()
    # again: nothing is judged twice; a new battle is judged alone
    vote_battles(store, 1, tag="new-")
    judging.start("admin", scripted.url, FAKE)
    wait_for(lambda: finished(judging))
    assert (judging.state()["judged"], judging.state()["skipped"]) == (1, 6) and len(judge_rows(store)) == 7
    assert scripted.state["requests"] == 14  # each pair asked in both orders, none twice


def test_one_job_at_a_time_and_a_failure_is_kept_and_resumed(store, scripted):
    vote_battles(store, 8)
    judging = Judging(store, Access(False), scripted.url, FAKE, background=False, concurrency=2)
    scripted.state["delay"] = 0.3
    judging.start("anyone")  # outside demo mode every caller may
    with pytest.raises(CLOError, match="already running"):
        judging.start("anyone")
    wait_for(lambda: finished(judging))
    assert judging.state()["judged"] == 8
    # the judge falls over after 2 more verdicts (4 replies): the job stops with one sentence, keeps them, and a
    # rerun resumes
    scripted.state.update(delay=0.0, fail_after=scripted.state["served"] + 4)
    vote_battles(store, 5, tag="more-")
    judging.concurrency = 1
    judging.start("anyone")
    wait_for(lambda: finished(judging))
    s = judging.state()
    assert s["status"] == "failed" and "HTTP 500" in s["error"] and "the 2 verdict(s) made before it are kept" in s["error"]
    assert "judging again resumes" in s["error"]
    assert "**Stopped:**" in judging.describe() and len(judge_rows(store)) == 10
    scripted.state["fail_after"] = None
    judging.start("anyone")
    wait_for(lambda: finished(judging))
    assert (judging.state()["judged"], judging.state()["skipped"]) == (3, 10) and len(judge_rows(store)) == 13


# ---- the background judge ----

class Gated(Judge):
    """The scripted judge, holding every verdict until the test opens its gate."""

    def do_POST(self):
        with self.server.state["lock"]:
            self.server.state["arrived"] += 1
        self.server.state["gate"].wait(30)
        super().do_POST()


@pytest.fixture
def gated(scripted):
    scripted.RequestHandlerClass = Gated
    scripted.state.update(gate=threading.Event(), arrived=0)
    yield scripted
    scripted.state["gate"].set()


def test_the_background_judge_judges_each_new_vote_without_holding_it_up(store, gated):
    vote_battles(store, 2, tag="before-")  # voted before the app started: caught up at start
    judging = Judging(store, Access(True), gated.url, FAKE, background=True)
    try:
        assert judging.background and "`scripted-judge`" in judging.public_line()
        wait_for(lambda: gated.state["arrived"] == 4)  # asked (both orders), and held at the gate
        reveals = vote_battles(store, 3, tag="after-")  # votes are cast and answered while the judge is held
        for _ in reveals:
            judging.poke()
        assert len(reveals) == 3 and judge_rows(store).empty
        gated.state["gate"].set()
        wait_for(lambda: len(judge_rows(store)) == 5)  # the two held, then the three new ones in a second pass
        assert set(judge_rows(store)["prompt"]) == {f"질문 before-{i}" for i in range(2)} | {f"질문 after-{i}" for i in range(3)}
        assert gated.state["requests"] == 10  # none asked twice (each pair in both orders)
    finally:
        judging.close()
    assert not judging.worker.is_alive()


def test_a_background_judge_that_is_down_says_so_and_retries_later(store):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    vote_battles(store, 1)
    logged = []
    judging = Judging(store, Access(True), url, FAKE, background=True, retry_s=3600, log=logged.append)
    try:
        wait_for(lambda: finished(judging))
        s = judging.state()
        assert s["status"] == "failed" and "unreachable" in s["error"] and s["trigger"] == "background"
        assert logged and "unreachable" in logged[0] and "Traceback" not in logged[0]
        judging.poke()  # within retry_s: not asked again
        time.sleep(0.3)
        assert len(logged) == 1 and judging.retry_at > time.monotonic()
    finally:
        judging.close()


def test_first_shown_share_measures_position_bias():
    import math

    import pandas as pd

    from clo.evaluate.judge.run import first_shown_share

    assert first_shown_share(pd.DataFrame({"outcome": ["a", "a", "b", "tie"]})) == pytest.approx(2 / 3)  # ties left out
    assert first_shown_share(pd.DataFrame({"outcome": ["b", "b"]})) == 0.0
    assert math.isnan(first_shown_share(pd.DataFrame({"outcome": ["tie"]})))
    # asked in both orders, a verdict is two choices: (a first, then b first) named a and b: the first shown twice
    both = pd.DataFrame({"outcome": ["tie", "a", "tie"], "judge_orders": [2, 2, None],
                         "judge_first": ["a", "a", None], "judge_second": ["b", "a", None]})
    assert first_shown_share(both) == pytest.approx(3 / 4)  # the single-order tie is left out


def test_the_held_out_prompts_are_the_ones_never_trained_on():
    from clo.evaluate.judge.prompts import load_prompt_pairs
    from clo.experiments.replicate import split_sample

    train, held = split_sample("ko")
    pairs = load_prompt_pairs("held-out", "ko")
    assert [p.id for p in pairs] == [r["id"] for r in held] and len(pairs) == 40
    assert [p.target for p in pairs] == [r["prompt_ko"] for r in held] and not {p.id for p in pairs} & {r["id"] for r in train}
    assert len(load_prompt_pairs("held-out", "ko", limit=3)) == 3


# ---- configuration ----

def test_the_judge_settings(monkeypatch, tmp_path):
    from clo.app.settings import Settings

    s = Settings.from_args(["--judge-url", "http://127.0.0.1:8001", "--judge-model", "judge"])
    assert (s.judge_url, s.judge_model, s.judge_background) == ("http://127.0.0.1:8001", "judge", True)
    with pytest.raises(CLOError, match="both --judge-url and --judge-model"):
        Settings.from_args(["--judge-url", "http://127.0.0.1:8001"])
    with pytest.raises(CLOError, match="http:// or https://"):
        Settings.from_args(["--judge-url", "127.0.0.1:8001", "--judge-model", "judge"])
    monkeypatch.setenv("CLO_JUDGE_URL", "http://127.0.0.1:8001")
    monkeypatch.setenv("CLO_JUDGE_MODEL", "judge")
    monkeypatch.setenv("CLO_JUDGE_BACKGROUND", "0")
    monkeypatch.setenv("CLO_JUDGE_API_KEY", "sk-test")
    s = Settings.from_args([])
    assert (s.judge_model, s.judge_background, s.judge_api_key) == ("judge", False, "sk-test")
    monkeypatch.setenv("CLO_JUDGE_BACKGROUND", "sometimes")
    with pytest.raises(CLOError, match="CLO_JUDGE_BACKGROUND='sometimes'"):
        Settings.from_args([])


# ---- the command line ----

def test_leaderboard_command_shows_a_judges_tally_and_its_agreement(store, scripted, capsys):
    from clo.__main__ import main

    vote_battles(store, 6)
    judging = Judging(store, Access(False), scripted.url, FAKE, background=False)
    judging.start("anyone")
    wait_for(lambda: finished(judging))
    main(["leaderboard", "--db", store.where, "--lang", "ko", "--judge", FAKE, "--bootstrap", "50"])
    out = capsys.readouterr().out
    assert f"the judge {FAKE}'s verdicts" in out and "agreement with the people" in out
    assert "6 battles: 100.0% agree" in out
    main(["leaderboard", "--db", store.where, "--lang", "ko", "--bootstrap", "50"])
    assert "the people's votes" in capsys.readouterr().out
    assert main(["leaderboard", "--db", store.where, "--judge", "nobody"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no votes by the judge 'nobody' in ") and "its judges: scripted-judge" in err


# ---- the whole app ----

@pytest.mark.slow
def test_the_app_judges_arena_votes_in_the_background(tiny_model, tmp_path, scripted):
    from conftest import launch_app, make_adapters
    from gradio_client import Client

    make_adapters(tiny_model, tmp_path / "adapters")
    # its own launch, not the shared app_url: the background judge is a setting at start (CLO_JUDGE_URL)
    proc, url = launch_app(tiny_model, tmp_path, CLO_JUDGE_URL=scripted.url, CLO_JUDGE_MODEL=FAKE)
    try:
        client = Client(url, verbose=False)
        for i in range(2):
            b = client.predict(f"질문 {i}: 오늘 무엇을 할까요?", "ko", api_name="/battle")
            client.predict(b["battle_id"], "a", api_name="/vote")

        def judged() -> int:  # the people's battles the judge has judged too
            agreement = client.predict("ko", api_name="/leaderboard")["agreement"]
            return agreement[0]["battles"] if agreement else 0

        wait_for(lambda: judged() == 2, timeout=60)
        board = client.predict("ko", api_name="/leaderboard")
        assert board["summary"][-1]["stored"] == 2  # the people's two votes; the judge's are apart
        assert {r["judge"] for r in board["agreement"]} == {FAKE}
        assert {r["judge"] for r in board["judge_ratings"]} == {FAKE}
        assert scripted.state["requests"] <= 4  # both orders of two pairs; identical answers are a tie without asking
        browse_the_judge(url, scripted)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def browse_the_judge(url: str, scripted) -> None:
    """In headless chromium: the Leaderboard names the background judge; the Train tab's LLM judge panel starts a job
    (outside demo mode anyone may) that judges nothing twice, and says so."""
    import shutil

    from conftest import ARTIFACTS, CHROMIUM

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does): the panel was not browsed")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    assert shutil.which(CHROMIUM)
    ARTIFACTS.mkdir(exist_ok=True)
    asked = scripted.state["requests"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Leaderboard").click()
        sync_api.expect(page.locator("#board-status")).to_contain_text(f"An LLM judge (`{FAKE}`)".replace("`", ""),
                                                                       timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "judge-leaderboard.png"), full_page=True)
        page.get_by_role("tab", name="Train").click()
        page.get_by_text("LLM judge: the paper's metric beside the people").click()
        sync_api.expect(page.locator("#judge-url textarea, #judge-url input")).to_have_value(scripted.url, timeout=30_000)
        page.locator("#judge-start").click()
        status = page.locator("#judge-status")
        sync_api.expect(status).to_contain_text("judged", timeout=30_000)
        sync_api.expect(status).to_contain_text("0 judged now, 2 judged before", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "judge-panel.png"), full_page=True)
        browser.close()
    assert scripted.state["requests"] == asked  # the job found nothing new to ask

"""Issue 24, items 11 and 12: the line-up file is checked as the Serving panel's Apply checks a choice (a misfit gets
one log line and its slot's default), and the judge keeps unreadable replies apart from the votes, asks them again
on a schedule (not with every vote), says so on its panel, and reads a plain-text judge when the app is told to
(--judge-constraint / CLO_JUDGE_CONSTRAINT). The judge is the scripted server of test_judge, on loopback.

    python -m pytest -q tests/test_lineup_judge.py
"""

import json
import re

import pytest
from conftest import FAKE, Judge
from test_judge_app import finished, judge_rows, vote_battles, wait_for
from test_lineup import adapter

from clo import CLOError
from clo.app.access import Access
from clo.evaluate.judge.background import Judging
from clo.evaluate.judge.client import JudgeClient
from clo.evaluate.judge.protocol import PAIRWISE
from clo.evaluate.judge.run import battle_items, judge_items

# ---- the line-up file ----


@pytest.fixture(scope="module")
def services(tiny_model, tmp_path_factory):
    """The app's services on the tiny model (PEFT): sft-ko and clo-ko (the defaults), clo-ko-v2 (a choice), and a
    Chinese SFT adapter, sft-zh."""
    from clo.app.context import Services
    from clo.app.settings import Settings

    root = tmp_path_factory.mktemp("lineup-judge")
    adapter(tiny_model, root / "adapters" / "sft-ko", "sft", seed=1, age_s=300)
    adapter(tiny_model, root / "adapters" / "clo-ko", "clo", seed=2, age_s=300)
    adapter(tiny_model, root / "adapters" / "clo-ko-v2", "clo", seed=3, age_s=10)
    adapter(tiny_model, root / "adapters" / "sft-zh", "sft", lang="zh", seed=4)
    services = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir=str(root / "adapters"),
                                 db=str(root / "votes.db")))
    yield services
    services.engine.close()


def read_lineup(services, tmp_path, capsys, chosen: dict):
    """A Lineup over `chosen` written as lineup.json, as the app reads it at start; (lineup, the lines it logged)."""
    from clo.app.lineup import Lineup

    path = tmp_path / "lineup.json"
    path.write_text(json.dumps(chosen))
    capsys.readouterr()
    lineup = Lineup(path, services.engine)
    return lineup, [line for line in capsys.readouterr().out.splitlines() if line.strip()]


@pytest.mark.parametrize("chosen, slot, name, why", [
    ({"sft": "sft-ko-deleted", "clo": "clo-ko-v2"}, "SFT", "sft-ko-deleted", "no adapter of that name is served"),
    ({"sft": "sft-zh", "clo": "clo-ko-v2"}, "SFT", "sft-zh", "trained for 'zh', not 'ko'"),
    ({"sft": "clo-ko-v2", "clo": None}, "SFT", "clo-ko-v2", "its method is clo, not sft"),
])
def test_a_misfit_in_the_lineup_file_is_logged_once_and_its_slot_serves_the_default(services, tmp_path, capsys,
                                                                                    chosen, slot, name, why):
    before = json.dumps({"ko": chosen})
    lineup, logged = read_lineup(services, tmp_path, capsys, {"ko": chosen})
    # one line at start, naming the file, the slot, the adapter and why
    assert len(logged) == 1, logged
    assert "lineup.json" in logged[0] and f"the {slot} slot for 'ko'" in logged[0] and repr(name) in logged[0]
    assert why in logged[0] and "default (sft-ko)" in logged[0]
    # the slot serves its default (not empty, not the misfit); the other slot keeps its valid choice
    assert lineup.slots("ko") == {"base": "base", "sft": "sft-ko", "clo": chosen["clo"]}
    assert name not in lineup.arena("ko") and "sft-ko" in lineup.arena("ko")
    for _ in range(3):
        lineup.slots("ko")
    assert not capsys.readouterr().out.strip()  # said once, not at every read
    assert (tmp_path / "lineup.json").read_text() == before  # the speaker's file is left as it is
    # the Serving panel's Apply refuses the same choice for the same reason: one check for both
    reason = lineup.misfit("ko", slot.lower(), name)
    assert why in reason and reason in logged[0]
    with pytest.raises(CLOError, match=f"cannot fill the {slot} slot for 'ko': {re.escape(reason)}"):
        lineup.choose("ko", sft=chosen["sft"], clo=chosen["clo"])


def test_swapped_sft_and_clo_both_fall_back_and_the_arena_list_is_checked_too(services, tmp_path, capsys):
    lineup, logged = read_lineup(services, tmp_path, capsys, {
        "ko": {"sft": "clo-ko", "clo": "sft-ko", "arena": ["base", "sft-zh", "clo-ko-v2"]}})
    assert lineup.slots("ko") == {"base": "base", "sft": "sft-ko", "clo": "clo-ko"}
    text = "\n".join(logged)
    assert len(logged) == 3, logged
    assert "the SFT slot for 'ko' names 'clo-ko'" in text and "its method is clo, not sft" in text
    assert "the CLO slot for 'ko' names 'sft-ko'" in text and "its method is sft, not clo" in text
    assert "the Arena's list for 'ko' names 'sft-zh'" in text and "trained for 'zh'" in text
    assert lineup.arena("ko") == ["base", "clo-ko-v2"]  # the Chinese adapter is left out, the rest drawn
    with pytest.raises(CLOError, match="cannot draw 'sft-zh'"):
        lineup.choose("ko", sft="sft-ko", clo="clo-ko", arena=["base", "sft-zh"])


# ---- the judge: unreadable replies ----

CHATTY = "Both responses have merit; " * 60  # a long reply that names no label


class Unreadable(Judge):
    """The scripted judge, answering every pair with a long reply that is no label (counted in state["requests"])."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.state["lock"]:
            self.server.state["requests"] += 1
        self.reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": CHATTY}}]})


class PlainText(Judge):
    """The scripted judge as a server that is not vLLM: its replies are plain text ("A"), without log-probs."""

    def do_GET(self):
        if self.path == "/v1/models":
            return self.reply(200, {"object": "list", "data": [{"id": FAKE, "object": "model", "owned_by": "someone"}]})
        self.reply(404, {"error": {"message": "not found"}})


@pytest.fixture
def unreadable(scripted):
    scripted.RequestHandlerClass = Unreadable
    return scripted


def test_unreadable_replies_are_kept_with_the_reply_and_never_counted_as_votes(unreadable, store):
    from clo.evaluate.agreement import agreement
    from clo.evaluate.ratings import judges, rater_votes

    vote_battles(store, 3)  # the people's votes on three pairs
    pairs = battle_items(store.votes())
    run = judge_items(pairs, JudgeClient(unreadable.url, FAKE), store)
    assert run.judged == 0 and len(run.unreadable) == 6 and run.unreadable_pairs == 3  # both orders asked
    kept = store.unreadable(FAKE, PAIRWISE.name)
    assert sorted(kept["pair_key"]) == sorted(p.key for p in pairs) and set(kept["attempts"]) == {1}
    assert set(kept["language"]) == {"ko"}
    assert all(r.startswith(CHATTY[:100]) and 100 < len(r) < len(CHATTY) for r in kept["reply"])  # kept, cut short
    # never a vote: no judge, no judge's tally, no agreement counts them; the people's votes are all there is
    votes = store.votes()
    assert len(votes) == 3 and judge_rows(store).empty and judges(votes) == []
    assert rater_votes(votes, FAKE).empty and agreement(votes, judge=FAKE)["n"] == 0
    # a readable verdict later replaces the kept reply, and only then counts
    unreadable.RequestHandlerClass = Judge
    again = judge_items(pairs, JudgeClient(unreadable.url, FAKE), store)
    assert again.judged == 3 and store.unreadable(FAKE, PAIRWISE.name).empty
    assert judges(store.votes()) == [FAKE] and agreement(store.votes(), judge=FAKE)["n"] == 3


def test_the_background_judge_does_not_ask_unreadable_pairs_again_with_every_vote(unreadable, store):
    n = 8
    judging = Judging(store, Access(False), unreadable.url, FAKE, background=True)
    try:
        wait_for(lambda: finished(judging))  # the catch-up pass at start (nothing to judge)
        for i in range(n):
            last = judging.state()["finished"]
            vote_battles(store, 1, tag=f"{i}-")
            judging.poke()
            wait_for(lambda: finished(judging) and judging.state()["finished"] != last)
        s = judging.state()
        # each new pair asked once (both orders): 2n calls, not n (n + 1)
        assert unreadable.state["requests"] == 2 * n, unreadable.state["requests"]
        assert (s["unreadable"], s["waiting"], s["judged"]) == (2, n - 1, 0)
        kept = store.unreadable(FAKE, PAIRWISE.name)
        assert len(kept) == n and set(kept["attempts"]) == {1} and (kept["next_utc"] > kept["last_utc"]).all()
    finally:
        judging.close()


def test_unreadable_pairs_are_asked_again_on_a_backoff_schedule_without_a_vote(unreadable, store, monkeypatch):
    import clo.evaluate.judge.run as judge_run  # where judge_items, not_due and next_retry_s read them

    monkeypatch.setattr(judge_run, "RETRY_FIRST_S", 0.4)
    monkeypatch.setattr(judge_run, "RETRY_ATTEMPTS", 3)
    vote_battles(store, 2)
    judging = Judging(store, Access(False), unreadable.url, FAKE, background=True)
    try:
        # 3 attempts each, the retries due 0.4 s then 0.8 s after the last (the loop waits ≥ 1 s between passes)
        wait_for(lambda: set(store.unreadable(FAKE, PAIRWISE.name)["attempts"]) == {3}, timeout=20)
        assert unreadable.state["requests"] == 12  # 2 pairs × 3 attempts × both orders
        import time

        time.sleep(2.0)  # past what a fourth attempt's wait would be: none is made
        judging.poke()
        time.sleep(0.5)
        assert unreadable.state["requests"] == 12
    finally:
        judging.close()


def test_the_panel_shows_no_tick_for_a_pass_of_unreadable_replies_and_quotes_one(unreadable, store):
    vote_battles(store, 3)
    judging = Judging(store, Access(False), unreadable.url, FAKE, background=False)
    judging.start("admin")
    wait_for(lambda: finished(judging))
    shown = judging.describe()
    assert "**Done:**" not in shown and "every reply was unreadable (6)" in shown  # 3 pairs, both orders
    assert "Both responses have merit" in shown and len(shown) < 700  # one example, cut short
    assert "--judge-constraint none" in shown
    # a pass where some replies were read: a tick, the count unreadable and an example
    unreadable.RequestHandlerClass = Judge
    vote_battles(store, 1, tag="more-")
    judging.start("admin")  # an admin's job asks the kept pairs again at once
    wait_for(lambda: finished(judging))
    assert judging.state()["judged"] == 4 and "**Done:**" in judging.describe()


def test_the_judge_constraint_setting_lets_the_app_read_a_plain_text_judge(scripted, services, tmp_path, monkeypatch):
    from clo.app.context import Services
    from clo.app.settings import Settings

    scripted.RequestHandlerClass = PlainText
    args = ["--model", services.settings.model, "--adapters-dir", services.settings.adapters_dir, "--db",
            str(tmp_path / "votes.db"), "--judge-url", scripted.url, "--judge-model", FAKE, "--judge-background", "off"]
    assert Settings.from_args(args).judge_constraint == "auto"  # the default still suits vLLM
    monkeypatch.setenv("CLO_JUDGE_CONSTRAINT", "sometimes")
    with pytest.raises(CLOError, match="CLO_JUDGE_CONSTRAINT='sometimes'"):
        Settings.from_args(args)
    monkeypatch.setenv("CLO_JUDGE_CONSTRAINT", "none")
    assert Settings.from_args(args).judge_constraint == "none"
    monkeypatch.delenv("CLO_JUDGE_CONSTRAINT")
    for constraint, judged in (("auto", 0), ("none", 2)):  # auto asks this server for log-probs: its "A" is unread
        db = tmp_path / f"{constraint}.db"
        settings = Settings.from_args([*args[:5], str(db), *args[6:], "--judge-constraint", constraint])
        app = Services(settings, engine=services.engine)
        vote_battles(app.store, 2)
        app.judging.start("admin")
        wait_for(lambda: finished(app.judging))
        assert app.judging.state()["judged"] == judged, (constraint, app.judging.state())
        app.store.close()
    assert "logprobs" not in scripted.state["bodies"][-1]  # asked for plain text
    assert set(judge_rows(open_store_at(tmp_path / "none.db"))["outcome"]) <= {"a", "b"}


def open_store_at(path):
    from clo.evaluate.store import open_store

    return open_store(str(path))

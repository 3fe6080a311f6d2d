"""What the audience is served: slots chosen by the speaker, never taken over by a training run; identical answers
never shown as a battle; a skipped battle records nothing; a retrained adapter's votes stay apart."""

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from clo import CLOError
from clo.models.tiny import build_random_adapter


def adapter(model: Path, folder: Path, method: str, lang: str = "ko", seed: int = 1, age_s: float = 0.0) -> Path:
    """A random adapter whose manifest says `method` and `lang`; `age_s` back-dates its weights."""
    path = build_random_adapter(model, folder, seed=seed)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps(manifest | {"method": method, "target_lang": lang}))
    if age_s:
        stamp = time.time() - age_s
        os.utime(path / "adapter_model.safetensors", (stamp, stamp))
    return path


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    """adapters/: sft-ko, clo-ko (the canonical names), clo-ko-test (newer, non-canonical), clo-sw (newest only)."""
    root = tmp_path_factory.mktemp("lineup") / "adapters"
    adapter(tiny_model, root / "sft-ko", "sft", seed=1, age_s=300)
    adapter(tiny_model, root / "clo-ko", "clo", seed=2, age_s=300)
    adapter(tiny_model, root / "clo-ko-test", "clo", seed=3, age_s=10)
    adapter(tiny_model, root / "clo-sw-old", "clo", lang="sw", seed=4, age_s=300)
    adapter(tiny_model, root / "clo-sw-new", "clo", lang="sw", seed=5, age_s=10)
    return root


@pytest.fixture
def services(tiny_model, served, tmp_path):
    """The app's services on the tiny model (PEFT) over a fresh copy of the adapters."""
    from clo.app.context import Services
    from clo.app.settings import Settings

    shutil.copytree(served, tmp_path / "adapters")
    for p in (tmp_path / "adapters").iterdir():  # copytree keeps mtimes: the ages hold
        shutil.copystat(served / p.name / "adapter_model.safetensors", p / "adapter_model.safetensors")
    services = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir=str(tmp_path / "adapters"),
                                 db=str(tmp_path / "votes.db")))
    yield services
    services.engine.close()  # its scheduler thread holds it until closed


def test_defaults_prefer_the_canonical_name_then_the_newest(services):
    assert services.slots("ko") == {"base": "base", "sft": "sft-ko", "clo": "clo-ko"}  # not the newer clo-ko-test
    assert services.slots("sw") == {"base": "base", "sft": None, "clo": "clo-sw-new"}
    assert services.battle_variants("ko") == ["base", "sft-ko", "clo-ko"]
    assert services.lineup.languages() == ["ko", "sw"]
    assert "no adapters yet" in dict((c, l) for l, c in services.language_choices())["de"]
    assert services.target_languages()[:2] == ["ko", "sw"]  # languages with adapters first


def test_an_adapter_trained_while_serving_is_listed_not_promoted(services, tiny_model, tmp_path):
    fresh = adapter(tiny_model, tmp_path / "adapters" / "clo-ko-new", "clo", seed=9)
    services.engine.add_adapter(fresh)  # what the Train tab does when a run finishes
    assert services.slots("ko")["clo"] == "clo-ko" and "clo-ko-new" not in services.battle_variants("ko")
    assert "clo-ko-new" in services.lineup.candidates("ko", "clo")
    services.lineup.choose("ko", sft="sft-ko", clo="clo-ko-new")
    assert services.slots("ko")["clo"] == "clo-ko-new"
    assert services.battle_variants("ko") == ["base", "sft-ko", "clo-ko-new"]  # the Arena follows the slots


def test_the_choice_is_saved_and_survives_a_restart(services, tiny_model, tmp_path):
    from clo.app.context import Services

    services.lineup.choose("ko", sft=None, clo="clo-ko-test", arena=["clo-ko", "clo-ko-test"])
    saved = json.loads((tmp_path / "adapters" / "lineup.json").read_text())
    assert saved["ko"] == {"sft": None, "clo": "clo-ko-test", "arena": ["clo-ko", "clo-ko-test"]}
    again = Services(services.settings)
    assert again.slots("ko") == {"base": "base", "sft": None, "clo": "clo-ko-test"}
    assert again.battle_variants("ko") == ["clo-ko", "clo-ko-test"]
    assert "chosen by the speaker" in again.lineup.describe("ko", "m") and "#" in again.lineup.describe("ko", "m")
    assert again.slots("sw")["clo"] == "clo-sw-new"  # other languages keep their defaults
    assert not list((tmp_path / "adapters").glob(".lineup.json*"))  # no temporary file left behind


@pytest.mark.parametrize("kwargs, message", [
    ({"sft": "clo-ko", "clo": None}, "cannot fill the SFT slot"),  # a CLO adapter in the SFT slot would mislabel it
    ({"sft": None, "clo": "clo-sw-new"}, "cannot fill the CLO slot for 'ko'"),  # another language's adapter
    ({"sft": None, "clo": "nope"}, "cannot fill the CLO slot"),
    ({"sft": None, "clo": None, "arena": ["base", "gpt-4"]}, "cannot draw 'gpt-4'"),
    ({"sft": None, "clo": None, "arena": ["base"]}, "at least two variants"),
])
def test_bad_choices_are_refused_and_nothing_is_written(services, tmp_path, kwargs, message):
    with pytest.raises(CLOError, match=message):
        services.lineup.choose("ko", **kwargs)
    assert not (tmp_path / "adapters" / "lineup.json").exists()
    assert services.slots("ko")["clo"] == "clo-ko"


def test_a_broken_lineup_file_is_named(services, tmp_path):
    from clo.app.lineup import Lineup

    (tmp_path / "adapters" / "lineup.json").write_text("{not json")
    with pytest.raises(CLOError, match=r"lineup.json: not valid JSON .*line 1"):
        Lineup(tmp_path / "adapters" / "lineup.json", services.engine)


def test_demo_mode_refuses_a_lineup_change_on_the_server(services):
    from types import SimpleNamespace

    from clo.app.ui import serving

    services.access.demo_mode, services.access.password = True, "pw"
    visitor, admin = SimpleNamespace(session_hash="visitor"), SimpleNamespace(session_hash="admin")
    with pytest.raises(CLOError, match="admin password"):
        serving.apply(services, visitor, "ko", "sft-ko", "clo-ko-test", [])
    assert services.slots("ko")["clo"] == "clo-ko"
    assert not services.access.unlock(admin, "wrong") and services.access.unlock(admin, "pw")
    assert "clo-ko-test" in serving.apply(services, admin, "ko", "sft-ko", "clo-ko-test", ["base", "sft-ko", "clo-ko"])
    assert services.slots("ko")["clo"] == "clo-ko-test"
    assert services.battle_variants("ko") == ["base", "sft-ko", "clo-ko-test"]  # unchanged ticks follow the slots
    with pytest.raises(CLOError, match="admin password"):
        serving.apply(services, visitor, "ko", None, None, [])


# ---- battles that can be judged ----

def test_identical_answers_are_never_a_battle(services, tmp_path):
    from clo.evaluate.arena import new_battle

    twin = tmp_path / "adapters" / "sft-ko-twin"
    shutil.copytree(tmp_path / "adapters" / "sft-ko", twin)  # the same weights: the same greedy answers
    services.engine.add_adapter(twin)
    services.lineup.choose("ko", sft="sft-ko", clo="clo-ko", arena=["sft-ko", "sft-ko-twin", "clo-ko"])
    for _ in range(6):
        b = new_battle(services, "서울에서 가 볼 만한 곳은?", "ko", voter="v")
        reveal = services.store.vote(b["battle_id"], "tie", voter="v")
        assert {reveal["variant_a"], reveal["variant_b"]} != {"sft-ko", "sft-ko-twin"}
        assert b["answer_a"] != b["answer_b"]
    services.lineup.choose("ko", sft="sft-ko", clo="clo-ko", arena=["sft-ko", "sft-ko-twin"])
    with pytest.raises(CLOError, match="every variant gave the same answer"):
        new_battle(services, "서울에서 가 볼 만한 곳은?", "ko", voter="v")


def test_a_battle_streams_its_answers_and_is_stored_only_when_whole(services, monkeypatch):
    """The Arena shows both answers as they arrive, like Compare; nothing on the way names a variant or can be voted
    on, the stored battle is the answers last shown, and a visitor who leaves mid-answer stores nothing."""
    from clo.evaluate.arena import battle_stream

    monkeypatch.setattr(services, "sampling", dataclasses.replace(services.sampling, max_tokens=40))
    shown = list(battle_stream(services, "서울에서 가 볼 만한 곳은?", "ko", voter="v"))
    assert len(shown) > 5 and "battle_id" in shown[-1] and not any("battle_id" in s for s in shown[:-1])
    assert {k for s in shown for k in s} == {"language", "prompt", "english", "answer_a", "answer_b", "battle_id"}
    grown = [len(s["answer_a"]) + len(s["answer_b"]) for s in shown]
    assert grown[0] == 0 and grown == sorted(grown)  # empty panes first, then only growing text
    assert (shown[-2]["answer_a"], shown[-2]["answer_b"]) == (shown[-1]["answer_a"], shown[-1]["answer_b"])
    reveal = services.store.vote(shown[-1]["battle_id"], "a", voter="v")
    stored = services.store.votes()
    assert stored.loc[0, "answer_a"] == shown[-1]["answer_a"] and reveal["variant_a"] == stored.loc[0, "variant_a"]

    leaving = battle_stream(services, "부산에서 가 볼 만한 곳은?", "ko", voter="w")
    for _ in range(3):
        next(leaving)
    assert services.engine.unfinished() > 0
    leaving.close()
    deadline = time.time() + 10
    while services.engine.unfinished() and time.time() < deadline:
        time.sleep(0.02)
    assert services.engine.unfinished() == 0
    rows, _ = services.store._read("SELECT COUNT(*) FROM battles")
    assert rows[0][0] == 1  # the voted one: the battle left mid-answer was never stored


def test_a_battle_that_asks_who_the_model_is_is_stored_flagged_and_not_rated(services):
    from clo.evaluate.arena import new_battle
    from clo.evaluate.board import leaderboard

    b = new_battle(services, "Who are you?", "ko", voter="v")
    services.store.vote(b["battle_id"], "a", voter="v")
    votes = services.store.votes()
    assert votes.loc[0, "leak"] == "the prompt asks who the model is"
    summary = leaderboard(votes, "ko")["summary"].set_index("language").loc["ko"]
    assert (summary["stored"], summary["leaked"], summary["rated"]) == (1, 1, 0)


def test_a_drawn_prompt_comes_with_its_english(services):
    from clo.evaluate.arena import new_battle

    b = new_battle(services, "", "ko", voter="v")
    assert b["english"] and services.english_of(b["prompt"], "ko") == b["english"]
    assert new_battle(services, "직접 쓴 질문", "ko", voter="v")["english"] is None


def test_a_skipped_battle_records_nothing(services):
    from clo.evaluate.arena import new_battle

    b = new_battle(services, "", "ko", voter="v")
    services.store.discard(b["battle_id"], voter="someone else")  # not theirs: nothing happens
    services.store.discard(b["battle_id"], voter="v")
    with pytest.raises(CLOError, match="unknown battle"):
        services.store.vote(b["battle_id"], "a", voter="v")
    assert services.store.votes().empty


# ---- a retrained adapter is rated apart ----

def test_votes_before_and_after_retraining_stay_apart(services, tiny_model, tmp_path):
    from clo.evaluate.board import leaderboard
    from clo.evaluate.arena import new_battle

    services.lineup.choose("ko", sft=None, clo="clo-ko", arena=["base", "clo-ko"])
    old_hash = services.engine.variants()["clo-ko"]
    for _ in range(5):
        b = new_battle(services, "", "ko", voter="v")
        services.store.vote(b["battle_id"], "tie", voter="v")
    path = tmp_path / "adapters" / "clo-ko"
    shutil.rmtree(path)
    adapter(tiny_model, path, "clo", seed=42)  # retrained under the same name
    services.engine.add_adapter(path)
    new_hash = services.engine.variants()["clo-ko"]
    assert new_hash != old_hash
    for _ in range(5):
        b = new_battle(services, "", "ko", voter="w")
        services.store.vote(b["battle_id"], "tie", voter="w")
    votes = services.store.votes()
    assert set(votes[["hash_a", "hash_b"]].stack().dropna()) == {old_hash, new_hash}
    tables = leaderboard(votes, language="ko")
    rated = set(tables["counts"]["variant"])
    assert rated == {"base", f"clo-ko@{old_hash[:6]}", f"clo-ko@{new_hash[:6]}"}
    assert tables["counts"].set_index(["variant", "opponent"]).loc[(f"clo-ko@{old_hash[:6]}", "base"), "ties"] == 5


# ---- an audience: fairness and nothing recomputed on the hot path ----

def test_one_visitor_cannot_hold_more_than_its_share(services):
    from types import SimpleNamespace

    me, you = SimpleNamespace(session_hash="me"), SimpleNamespace(session_hash="you")
    with services.in_flight(me), services.in_flight(me):
        with pytest.raises(CLOError, match="you have 2 requests being answered already"):
            with services.in_flight(me):
                pass
        with services.in_flight(you):  # another visitor is not held up
            pass
    with services.in_flight(me):  # a finished call frees its place
        pass
    assert services.flying == {}


def test_the_leaderboard_is_computed_again_only_when_a_vote_arrives(services):
    from clo.evaluate.arena import new_battle
    from clo.app.ui.leaderboard import Board

    board = Board(services)
    b = new_battle(services, "", "ko", voter="v")
    services.store.vote(b["battle_id"], "a", voter="v")
    first, files = board.get("ko")
    for _ in range(5):
        again, same_files = board.get("ko")
    assert board.computed == 1 and again is first and same_files == files
    b = new_battle(services, "", "ko", voter="v")
    services.store.vote(b["battle_id"], "b", voter="v")
    board.get("ko")
    assert board.computed == 2 and not Path(files["csv"]).exists()  # the old export is gone; Gradio serves its copy
    votes = services.store.votes()
    assert votes[["lang_a", "lang_b"]].notna().all().all()  # detected once, when the battle was made


def test_closing_a_compare_stream_aborts_its_answers(services, monkeypatch):
    """What Gradio does when a visitor leaves mid-answer: the handler's generator is closed, the engine stops."""
    from clo.app.ui.compare import compare_stream

    monkeypatch.setattr(services, "sampling", dataclasses.replace(services.sampling, max_tokens=200))
    stream = compare_stream(services, "서울에서 가 볼 만한 곳은?", "ko", "What is worth seeing in Seoul?")
    next(stream), next(stream)
    assert services.engine.unfinished() > 0
    stream.close()
    deadline = time.time() + 10
    while services.engine.unfinished() and time.time() < deadline:
        time.sleep(0.02)
    assert services.engine.unfinished() == 0
    assert services.engine.generate(services.requests("안녕", ["base"]))[0].finish_reason  # it serves on


def test_a_shipped_adapter_says_when_it_was_trained_not_when_it_was_copied(tmp_path):
    """The line-up's label dates an adapter by its manifest (written at training), so the shipped pair copied into
    models/ at the first start does not read "trained" at the copy's time; without a manifest date, the weights'."""
    import datetime as dt
    import json
    import shutil
    import time

    from clo.app.lineup import label
    from clo.engines.base import read_adapter

    from conftest import ROOT

    folder = shutil.copytree(ROOT / "assets" / "smollm2" / "adapters" / "clo-sw", tmp_path / "clo-sw",
                             copy_function=shutil.copy)  # a copy made now, as the first start makes it
    created = json.loads((folder / "manifest.json").read_text())["created_utc"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(dt.datetime.fromisoformat(created).timestamp()))
    assert f"trained {when}" in label(read_adapter(folder)) and created.startswith("2026-12-04")
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["created_utc"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    now = time.strftime("%Y-%m-%d", time.localtime())
    assert f"trained {now}" in label(read_adapter(folder))  # the copy's weights are from today

"""The votes survive a stop and an upgrade, and a prompt with nothing printable is no prompt (issue 24: 5, 6, 9).

- a clean stop (SIGTERM to `python app.py`) leaves every acknowledged vote in votes.db itself, no -wal beside it;
- VoteStore.close, called from another thread, lets a vote being written commit first, then checkpoints and
  closes every thread's connection; again, it does nothing;
- a migration first copies the old store to votes.db.bak-v<old> (SQLite's backup API), never over a file that is
  there, and says so in one line;
- a prompt of control characters, NULs or zero-width characters is refused as an empty one by Compare, the Arena,
  the engine and the store, and no battle is stored.
"""

import shutil
import signal
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest
from conftest import launch_app, make_adapters

from clo import CLOError
from clo.evaluate.schema import APPLICATION_ID, MIGRATIONS
from clo.evaluate.store import open_store

NOTHING_PRINTABLE = ["\x00", "\x00\x01\x02\x7f", "\u200b\u200c\u200d\ufeff", "\x00 \u200b\t\x00", "\u3164\u2060"]


def votes_in(path: Path) -> list[tuple]:
    """The votes in the SQLite file at `path`, read from a copy of that one file (no -wal, no -shm)."""
    copy = path.parent / "copied" / path.name
    copy.parent.mkdir(exist_ok=True)
    shutil.copyfile(path, copy)
    with closing(sqlite3.connect(copy)) as conn:
        if not conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'votes'").fetchone()[0]:
            return []  # even the tables are still in the -wal
        return conn.execute("SELECT battle_id, outcome FROM votes ORDER BY battle_id").fetchall()


# ---- 5: a clean stop leaves votes.db whole ----

@pytest.mark.slow
def test_a_stopped_app_leaves_every_acknowledged_vote_in_votes_db_alone(tiny_model, tmp_path):
    from gradio_client import Client

    make_adapters(tiny_model, tmp_path / "adapters")
    # its own launch, not the shared app_url: the test stops the app (SIGTERM) and reads its votes.db alone
    proc, url = launch_app(tiny_model, tmp_path, CLO_MAX_TOKENS="8")
    acknowledged = []
    try:
        client = Client(url, verbose=False)
        for outcome in ("a", "b", "tie", "both_bad", "a"):
            battle = client.predict("", "ko", api_name="/battle")  # a drawn prompt: another is drawn on equal answers
            reveal = client.predict(battle["battle_id"], outcome, api_name="/vote")
            acknowledged.append((reveal["battle_id"], outcome))
        proc.send_signal(signal.SIGTERM)  # what a container's or a Space's stop sends
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert votes_in(tmp_path / "votes.db") == sorted(acknowledged)
    wal = tmp_path / "votes.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    log = (tmp_path / "app.log").read_text()
    assert code == 0 and "Traceback" not in log, log[-2000:]


def test_close_lets_a_vote_being_written_commit_then_leaves_the_file_whole(tmp_path):
    db = tmp_path / "votes.db"
    store = open_store(str(db), seed=0)

    def vote(voter: str) -> None:
        battle = store.create_battle(voter=voter, language="ko", prompt=f"from {voter}",
                                     answers={"sft-ko": f"x {voter}", "clo-ko": f"y {voter}"})
        store.vote(battle.id, "a", voter=voter)

    # votes from threads of their own: each thread has its own connection, which close must close too
    voters = [threading.Thread(target=vote, args=(f"v{i}",)) for i in range(4)]
    for t in voters:
        t.start()
    for t in voters:
        t.join()

    # one more vote, stopped inside its transaction (the write lock held) when close is called
    inside, release, written = threading.Event(), threading.Event(), []
    check_rate = store._check_rate

    def held_check_rate(*args):
        inside.set()
        release.wait(10)
        return check_rate(*args)

    def late() -> None:
        vote("late")
        written.append("late")

    store._check_rate = held_check_rate
    writer = threading.Thread(target=late)
    writer.start()
    assert inside.wait(10)
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive()  # close waits for the vote under way
    release.set()
    closer.join(30)
    writer.join(30)
    assert not closer.is_alive() and written == ["late"]  # the vote was written, then the store closed
    assert len(votes_in(db)) == 5
    store.close()  # again: nothing happens
    with pytest.raises(CLOError, match="is closed"):
        store.votes()


# ---- 6: a migration backs the old store up first and says so ----

def old_store(path: Path, version: int = 3, votes: int = 3) -> list[tuple]:
    """A store as schema `version` wrote it, with `votes` votes; returns its votes' rows."""
    with closing(sqlite3.connect(path)) as conn, conn:
        for migration in MIGRATIONS[:version]:
            conn.executescript(migration)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        for i in range(votes):
            conn.execute("INSERT INTO battles (id, created_utc, expires_utc, voter, language, prompt, variant_a, "
                         "variant_b, answer_a, answer_b, blind) VALUES (?, '2025-01-01T00:00:00+00:00', "
                         "'2025-01-01T01:00:00+00:00', 'v', 'ko', ?, 'sft-ko', 'clo-ko', 'x', 'y', 1)", (f"b{i}", f"p{i}"))
            conn.execute("INSERT INTO votes (id, battle_id, created_utc, voter, language, prompt, variant_a, variant_b, "
                         "answer_a, answer_b, left_variant, outcome, blind) VALUES (?, ?, '2025-01-01T00:01:00+00:00', "
                         "'v', 'ko', ?, 'sft-ko', 'clo-ko', 'x', 'y', 'sft-ko', ?, 1)",
                         (f"v{i}", f"b{i}", f"p{i}", ("a", "b", "tie")[i % 3]))
        return conn.execute("SELECT * FROM votes ORDER BY id").fetchall()


def schema_and_votes(path: Path) -> tuple[int, list[tuple]]:
    with closing(sqlite3.connect(path)) as conn:
        version = conn.execute("SELECT version FROM schema_version").fetchone()[0]
        return version, conn.execute("SELECT * FROM votes ORDER BY id").fetchall()


def test_a_migration_first_writes_a_backup_of_the_old_store_and_says_so(tmp_path, capsys):
    db = tmp_path / "votes.db"
    before = old_store(db, version=3, votes=3)
    open_store(str(db)).close()
    backup = tmp_path / "votes.db.bak-v3"
    assert backup.is_file()
    assert schema_and_votes(backup) == (3, before)  # the old schema and every old vote, as they were
    assert schema_and_votes(db)[0] == len(MIGRATIONS)
    said = capsys.readouterr().err
    assert f"migrated {db} from schema v3 to v{len(MIGRATIONS)}; backup at {backup}" in said
    open_store(str(db)).close()  # a store of the current schema: no backup, not a word
    assert sorted(p.name for p in tmp_path.iterdir() if ".bak" in p.name) == ["votes.db.bak-v3"]
    assert "migrated" not in capsys.readouterr().err


def test_a_backup_never_overwrites_a_file_already_there(tmp_path, capsys):
    db = tmp_path / "votes.db"
    before = old_store(db, version=2, votes=2)
    mine = tmp_path / "votes.db.bak-v2"
    mine.write_text("an older backup of my own")
    open_store(str(db)).close()
    assert mine.read_text() == "an older backup of my own"
    assert (tmp_path / "votes.db.bak-v2.1").is_file()
    assert schema_and_votes(tmp_path / "votes.db.bak-v2.1") == (2, before)
    assert "backup at " + str(tmp_path / "votes.db.bak-v2.1") in capsys.readouterr().err


# ---- 9: nothing printable is no prompt ----

@pytest.fixture(scope="module")
def services(tiny_model, tmp_path_factory):
    from clo.app.context import Services
    from clo.app.settings import Settings

    work = tmp_path_factory.mktemp("store-safety")
    make_adapters(tiny_model, work / "adapters")
    services = Services(Settings(model=str(tiny_model), engine="peft", adapters_dir=str(work / "adapters"),
                                 db=str(work / "votes.db"), max_tokens=8))
    yield services
    services.close()


def message(call) -> str:
    with pytest.raises(CLOError) as e:
        call()
    return str(e.value)


def battles(services) -> int:
    return services.store._read("SELECT COUNT(*) FROM battles")[0][0][0]


@pytest.mark.parametrize("prompt", NOTHING_PRINTABLE, ids=repr)
def test_a_prompt_with_nothing_printable_is_refused_as_an_empty_one(services, prompt):
    from clo.engines import Request
    from clo.evaluate.arena import new_battle
    from clo.app.ui.compare import compare_api

    empty = message(lambda: compare_api(services, "", "ko"))
    assert message(lambda: compare_api(services, prompt, "ko")) == empty
    assert message(lambda: services.check_prompt(prompt)) == empty
    before = battles(services)
    assert message(lambda: new_battle(services, prompt, "ko", voter="visitor", address="10.0.0.1")) == empty
    assert battles(services) == before  # nothing generated, no battle stored
    # under every caller: the engine and the store refuse it as they refuse an empty prompt
    ask = lambda text: lambda: services.engine.generate([Request("base", [{"role": "user", "content": text}])])  # noqa: E731
    assert message(ask(prompt)) == message(ask(""))
    store = lambda text: lambda: services.store.create_battle(  # noqa: E731
        voter="v", language="ko", prompt=text, answers={"sft-ko": "x", "clo-ko": "y"})
    assert message(store(prompt)) == message(store(""))
    assert battles(services) == before


def test_control_characters_are_taken_out_of_a_printable_prompt_before_it_is_stored(services):
    assert services.check_prompt(" 안녕\x00하세요\x07\r\n뭐 해?\t ") == "안녕하세요\n뭐 해?"
    from clo.evaluate.arena import new_battle

    battle = new_battle(services, "What\x00 is 2 + 2?\x1b", "ko", voter="visitor", address="10.0.0.2")
    assert battle["prompt"] == "What is 2 + 2?"
    stored = services.store._read("SELECT prompt FROM battles WHERE id = ?", (battle["battle_id"],))[0][0][0]
    assert stored == "What is 2 + 2?"

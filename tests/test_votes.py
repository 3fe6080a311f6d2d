"""The vote store: blind battles, one vote per battle, durability under concurrency and crashes, bad input."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import ROOT

from clo import CLOError
from clo.evaluate.store import Limits, open_store

ANSWERS = {"sft-ko": "첫째 답입니다", "clo-ko": "둘째 답입니다"}
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


# `store` (a fresh SQLite store) and `postgres` (a new database on a real PostgreSQL server) are tests/conftest.py's


def battle(store, voter="v1", prompt="서울에서 뭘 볼까?", **kw):
    return store.create_battle(voter=voter, language="ko", prompt=prompt, answers=ANSWERS,
                               hashes={"sft-ko": "h-sft", "clo-ko": "h-clo"}, engine="peft", **kw)


def test_battle_hides_identities_until_the_vote(store):
    b = battle(store)
    assert {b.answer_a, b.answer_b} == set(ANSWERS.values())
    assert set(vars(b)) == {"id", "language", "prompt", "answer_a", "answer_b", "expires_utc"}
    assert not any(name in str(value) for value in vars(b).values() for name in ANSWERS)
    reveal = store.vote(b.id, "a", voter="v1")
    assert {reveal["variant_a"], reveal["variant_b"]} == set(ANSWERS)
    assert ANSWERS[reveal["variant_a"]] == b.answer_a  # the reveal matches what was on the left
    row = store.votes().iloc[0]
    assert row.outcome == "a" and row.left_variant == row.variant_a and row.blind
    assert row.voter == store.pseudonyms("v1", None)[0] and row.voter != "v1"
    assert {row.hash_a, row.hash_b} == {"h-sft", "h-clo"} and row.engine == "peft"
    assert row.prompt == "서울에서 뭘 볼까?" and row.language == "ko"


def test_sides_are_random(store):
    lefts = set()
    for i in range(30):
        b = battle(store)
        lefts.add(store.vote(b.id, "tie", voter="v1")["variant_a"])
    assert lefts == set(ANSWERS)


def test_second_vote_refused_and_nothing_written(store):
    b = battle(store)
    store.vote(b.id, "b", voter="v1")
    with pytest.raises(CLOError, match="already has a vote"):
        store.vote(b.id, "a", voter="v1")
    assert len(store.votes()) == 1 and store.votes().iloc[0].outcome == "b"


@pytest.mark.parametrize("battle_id, outcome, voter, message", [
    ("no-such-battle", "a", "v1", "unknown battle 'no-such-battle'"),
    (None, "left", "v1", "unknown outcome 'left'"),
    (None, "a", "someone-else", "belongs to another session"),
])
def test_bad_votes_are_refused(store, battle_id, outcome, voter, message):
    b = battle(store)
    with pytest.raises(CLOError, match=message):
        store.vote(battle_id or b.id, outcome, voter=voter)
    assert store.votes().empty


def test_expired_battle(tmp_path):
    s = open_store(str(tmp_path / "v.db"), limits=Limits(battle_ttl_s=0.05))
    b = battle(s)
    time.sleep(0.1)
    with pytest.raises(CLOError, match="expired"):
        s.vote(b.id, "a", voter="v1")
    assert s.votes().empty


def test_prompt_limits(tmp_path):
    s = open_store(str(tmp_path / "v.db"), limits=Limits(max_prompt_chars=100))
    with pytest.raises(CLOError, match="over the limit of 100"):
        battle(s, prompt="x" * 101)
    with pytest.raises(CLOError, match="empty prompt"):
        battle(s, prompt="  ")


def test_rate_limit_per_voter(tmp_path):
    s = open_store(str(tmp_path / "v.db"), limits=Limits(votes_per_window=3, window_s=60))
    for _ in range(3):
        s.vote(battle(s, voter="fast").id, "a", voter="fast")
    with pytest.raises(CLOError, match="too many votes"):
        s.vote(battle(s, voter="fast").id, "a", voter="fast")
    s.vote(battle(s, voter="other").id, "a", voter="other")  # others are not limited
    assert len(s.votes()) == 4


def test_sessions_from_one_address_share_its_limit_and_the_message_says_when_to_retry(tmp_path):
    s = open_store(str(tmp_path / "v.db"), limits=Limits(votes_per_window=10, votes_per_address=3, window_s=600))
    for session in ("tab-1", "tab-2", "tab-3"):  # a fresh session each time: the address still counts them all
        s.vote(battle(s, voter=session, address="203.0.113.7").id, "a", voter=session, address="203.0.113.7")
    late = battle(s, voter="tab-4", address="203.0.113.7")
    with pytest.raises(CLOError, match=r"too many votes from this network address: at most 3 per 10 minutes; "
                                       r"try again in (59\d|600) s"):
        s.vote(late.id, "a", voter="tab-4", address="203.0.113.7")
    s.vote(battle(s, voter="tab-1", address="198.51.100.2").id, "a", voter="tab-1", address="198.51.100.2")
    assert len(s.votes()) == 4  # another address is not held up, and the refused vote left nothing


def test_a_battle_is_voted_on_only_by_its_session_from_its_address(store):
    b = battle(store, voter="tab", address="203.0.113.7")
    with pytest.raises(CLOError, match="another session"):
        store.vote(b.id, "a", voter="tab", address="198.51.100.2")  # the same session id from elsewhere
    with pytest.raises(CLOError, match="another session"):
        store.vote(b.id, "a", voter="other-tab", address="203.0.113.7")
    store.vote(b.id, "a", voter="tab", address="203.0.113.7")


def test_voter_keys_are_keyed_by_a_secret_kept_in_the_store(tmp_path, monkeypatch):
    monkeypatch.delenv("CLO_SECRET", raising=False)
    one = open_store(str(tmp_path / "one.db"))
    again = open_store(str(tmp_path / "one.db"))  # reopened: the same secret, so the same voter keeps one key
    other = open_store(str(tmp_path / "two.db"))
    key = one.pseudonyms("tab", "203.0.113.7")
    assert key == again.pseudonyms("tab", "203.0.113.7") and key != other.pseudonyms("tab", "203.0.113.7")
    assert "203.0.113.7" not in "".join(key) and key[0] != key[1]
    import hashlib

    assert key[1] != hashlib.sha256(b"clo:203.0.113.7").hexdigest()[:24]  # not the old public salt
    monkeypatch.setenv("CLO_SECRET", "from-the-space-secrets")
    assert open_store(str(tmp_path / "one.db")).pseudonyms("tab", None) == other.__class__(
        other.url).pseudonyms("tab", None)  # CLO_SECRET wins over each store's own


def test_pairs_with_fewer_votes_are_drawn_more(store):
    variants = ["base", "sft-ko", "clo-ko"]
    for _ in range(20):  # many votes on base vs sft
        b = store.create_battle(voter="v", language="ko", prompt="p", answers={"base": "x", "sft-ko": "y"})
        store.vote(b.id, "tie", voter="v")
    draws = [frozenset(store.draw_pair(variants, "ko")) for _ in range(300)]
    assert draws.count(frozenset({"base", "sft-ko"})) < draws.count(frozenset({"base", "clo-ko"})) / 5
    # other languages are unaffected
    other = [frozenset(store.draw_pair(variants, "sw")) for _ in range(300)]
    assert other.count(frozenset({"base", "sft-ko"})) > 60


def test_named_votes_are_flagged(store):
    b = battle(store, blind=False)
    store.vote(b.id, "a", voter="v1")
    assert not store.votes().iloc[0].blind


def test_foreign_and_corrupt_files_are_left_untouched(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("these are my notes, not a database")
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    corrupt = tmp_path / "corrupt.db"
    open_store(str(corrupt)).close()
    data = bytearray(corrupt.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # smash the first page after the header
    corrupt.write_bytes(bytes(data))
    for path, message in ((text, "not an SQLite database"), (foreign, "another application"), (corrupt, "not a usable vote store")):
        before = path.read_bytes()
        with pytest.raises(CLOError, match=message):
            open_store(str(path))
        assert path.read_bytes() == before, path.name


def test_reopen_keeps_votes_and_schema(tmp_path):
    path = str(tmp_path / "v.db")
    s = open_store(path)
    s.vote(battle(s).id, "a", voter="v1")
    s.close()
    again = open_store(path)
    assert len(again.votes()) == 1


WRITER = """
import sys
from clo.evaluate.store import open_store, Limits
store = open_store(sys.argv[1], limits=Limits(votes_per_window=10**9))
for i in range(int(sys.argv[2])):
    b = store.create_battle(voter=sys.argv[3], language="ko", prompt=f"p{i}", answers={"x": "1", "y": "2"})
    store.vote(b.id, "a", voter=sys.argv[3])
    print(b.id, flush=True)
"""


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    path = str(tmp_path / "v.db")
    open_store(path).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, "500", f"w{i}"], stdout=subprocess.PIPE, text=True, env=ENV)
             for i in range(8)]
    acknowledged = set()
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0
        acknowledged |= set(out.split())
    votes = open_store(path).votes()
    assert len(votes) == 4000 == len(acknowledged)
    assert votes.battle_id.is_unique and votes.id.is_unique
    assert set(votes.battle_id) == acknowledged


def test_sigkill_loses_no_acknowledged_vote(tmp_path):
    path = str(tmp_path / "v.db")
    open_store(path).close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, path, "100000", "k"], stdout=subprocess.PIPE, text=True, env=ENV)
    acknowledged = []
    while len(acknowledged) < 300:
        acknowledged.append(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acknowledged += proc.stdout.read().split()  # everything it printed before dying was acknowledged
    stored = set(open_store(path).votes().battle_id)
    assert set(acknowledged) <= stored


def test_postgresql_store(postgres):
    s = open_store(postgres, seed=1)
    b = battle(s)
    reveal = s.vote(b.id, "tie", voter="v1")
    with pytest.raises(CLOError, match="already has a vote"):
        s.vote(b.id, "a", voter="v1")
    votes = s.votes()
    assert len(votes) == 1 and votes.iloc[0].outcome == "tie" and votes.iloc[0].variant_a == reveal["variant_a"]
    # a second replica on the same database sees the vote and cannot vote again
    replica = open_store(postgres)
    with pytest.raises(CLOError, match="already has a vote"):
        replica.vote(b.id, "b", voter="v1")
    assert len(replica.votes()) == 1



def test_replicas_opening_a_new_postgresql_database_at_once_all_open_it(postgres):
    """Four stores (as four app replicas would, each with its own connection) open one new database at the same
    moment: each opens it and they share one voter secret. Before the migration took an advisory lock, all but one
    stopped with PostgreSQL's unique violation on pg_type (two CREATE TABLEs of one name at once)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    together = threading.Barrier(4)

    def start(_):
        together.wait()
        s = open_store(postgres)
        try:
            return s.secret
        finally:
            s.close()

    with ThreadPoolExecutor(4) as pool:
        secrets = list(pool.map(start, range(4)))
    assert len(set(secrets)) == 1

@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_round_trips(store, tmp_path, fmt):
    import pandas as pd

    for outcome in ("a", "b", "tie", "both_bad"):
        store.vote(battle(store).id, outcome, voter="v1")
    out = tmp_path / f"votes.{fmt}"
    from clo.evaluate.export import export_votes

    export_votes(store, out)
    back = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[fmt](out)
    assert sorted(back.outcome) == ["a", "b", "both_bad", "tie"]
    assert set(back.columns) >= {"battle_id", "variant_a", "variant_b", "answer_a", "left_variant", "hash_a", "blind"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_unknown_format(store, tmp_path):
    from clo.evaluate.export import export_votes

    with pytest.raises(CLOError, match="unknown export format 'xlsx'"):
        export_votes(store, tmp_path / "v.xlsx")


@pytest.mark.slow
def test_cli_export_and_leaderboard(tmp_path):
    db = str(tmp_path / "votes.db")
    store = open_store(db, seed=3)
    for i in range(40):  # clo wins most battles against base
        b = store.create_battle(voter="v", language="ko", prompt=f"p{i}", answers={"base": "x", "clo-ko": "y"})
        clo_left = store.vote(b.id, "tie", voter="v") if i % 10 == 0 else None
        if clo_left is None:
            side = "a" if store_left_is(store, b.id, "clo-ko") else "b"
            store.vote(b.id, side, voter="v")
    named = store.create_battle(voter="v", language="ko", prompt="named", answers={"base": "x", "clo-ko": "y"}, blind=False)
    store.vote(named.id, "a", voter="v")
    run = lambda *a: subprocess.run([sys.executable, "-m", "clo", *a], capture_output=True, text=True, env=ENV, cwd=tmp_path)  # noqa: E731
    r = run("votes", "export", "--db", db, "--format", "csv", "--out", "v.csv")
    assert r.returncode == 0 and "wrote 41 votes" in r.stdout and (tmp_path / "v.csv").is_file()
    r = run("leaderboard", "--db", db, "--lang", "ko", "--bootstrap", "200")
    assert r.returncode == 0, r.stderr
    assert "clo wins / ties / losses" in r.stdout and "Bradley–Terry" in r.stdout
    wtl = r.stdout.split("## clo wins")[1].split("##")[0]
    row = next(line.split() for line in wtl.splitlines() if " base " in f" {line} ")
    assert row[1:7] == ["base", "36", "4", "0", "0", "40"]  # wins, ties, losses, both_bad, battles; the named vote is not rated


def store_left_is(store, battle_id, variant) -> bool:
    with store._transaction() as cur:
        cur.execute("SELECT variant_a FROM battles WHERE id = ?", (battle_id,))
        return cur.fetchone()[0] == variant


def test_reads_do_not_wait_for_a_writer(tmp_path):
    """A writer holding SQLite's write lock (a vote being committed) does not hold up the leaderboard's reads."""
    store = open_store(str(tmp_path / "votes.db"))
    battle = store.create_battle(voter="v", language="ko", prompt="p", answers={"base": "x", "clo-ko": "y"})
    store.vote(battle.id, "a", voter="v")
    writer = sqlite3.connect(tmp_path / "votes.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, held
    try:
        started = time.perf_counter()
        assert len(store.votes()) == 1 and store.count()[0] == 1 and store.vote_counts("ko")
        assert time.perf_counter() - started < 1.0
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_expired_unvoted_battles_are_pruned(tmp_path):
    store = open_store(str(tmp_path / "votes.db"), limits=Limits(battle_ttl_s=0.05))
    voted = store.create_battle(voter="v", language="ko", prompt="p", answers={"base": "x", "clo-ko": "y"})
    store.vote(voted.id, "a", voter="v")
    idle = store.create_battle(voter="v", language="ko", prompt="p", answers={"base": "x", "clo-ko": "z"})
    time.sleep(0.1)
    assert store.prune() == 1  # the idle one; the voted one stays with its vote
    with pytest.raises(Exception, match="unknown battle"):
        store.vote(idle.id, "a", voter="v")
    assert len(store.votes()) == 1 and store.prune() == 0


# ---- judge votes (clo.evaluate.judge) ----

def judgment(outcome="a", judge="judge-x", prompt="서울에서 뭘 볼까?", first="clo-ko", **kw):
    from clo.evaluate.judgments import Judgment

    second = "sft-ko" if first == "clo-ko" else "clo-ko"
    return Judgment(judge=judge, protocol="clo-pairwise-1", language="ko", prompt=prompt, variant_a=first,
                    variant_b=second, answer_a=ANSWERS[first], answer_b=ANSWERS[second], outcome=outcome, reply="A", **kw)


def test_judge_votes_are_stored_once_flagged_and_exported(store, tmp_path):
    import pandas as pd

    from clo.evaluate.export import export_votes

    human = battle(store)
    store.vote(human.id, "a", voter="v1")
    assert store.record_judgment(judgment("a")) is True
    # the same pair, the other way round: the same pair key, so not judged twice
    assert store.record_judgment(judgment("b", first="sft-ko")) is False
    assert store.record_judgment(judgment("b", judge="judge-y")) is True  # another judge may judge it
    votes = store.votes()
    assert len(votes) == 3 and votes["judge"].isna().sum() == 1
    judged = votes[votes["judge"] == "judge-x"].iloc[0]
    assert (judged.voter, judged.judge_protocol, judged.judge_reply, judged.left_variant, judged.outcome) == (
        "judge", "clo-pairwise-1", "A", "clo-ko", "a")
    assert votes["pair_key"].nunique() == 1  # the human vote and both verdicts are on the same answers
    assert store.judged_keys("judge-x", "clo-pairwise-1") == {judged.pair_key}
    assert store.judged_keys("judge-x", "another-protocol") == set()
    assert store.vote_counts("ko") == {frozenset(ANSWERS): 1}  # the Arena's draw counts only people
    back = pd.read_csv(export_votes(store, tmp_path / "v.csv"))
    assert sorted(back["judge"].fillna("")) == ["", "judge-x", "judge-y"]


def test_bad_judgments_are_refused(store):
    with pytest.raises(CLOError, match="unknown judge outcome 'both_bad'"):
        store.record_judgment(judgment("both_bad"))
    with pytest.raises(CLOError, match="needs the judge's name"):
        store.record_judgment(judgment(judge=" "))
    with pytest.raises(CLOError, match="empty prompt"):
        store.record_judgment(judgment(prompt=" "))
    assert store.votes().empty


def previous_schema_store(path, version=3):
    """A store as schema `version` wrote it, with one human vote (the columns it had then)."""
    from clo.evaluate.schema import APPLICATION_ID, MIGRATIONS

    with sqlite3.connect(path) as conn:
        for migration in MIGRATIONS[:version]:
            conn.executescript(migration)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("INSERT INTO battles VALUES ('b1', '2025-01-01T00:00:00+00:00', '2025-01-01T01:00:00+00:00', 'v', "
                     "'ko', 'p', 'sft-ko', 'clo-ko', 'x', 'y', NULL, NULL, NULL, 1, 'ko', 'ko', NULL)")
        conn.execute("INSERT INTO votes VALUES ('v1', 'b1', '2025-01-01T00:01:00+00:00', 'v', 'ko', 'p', 'sft-ko', "
                     "'clo-ko', 'x', 'y', 'sft-ko', 'b', NULL, NULL, NULL, 1, 'ko', 'ko', NULL)")
    conn.close()


def test_a_store_of_the_previous_schema_is_read_as_it_is_and_migrated_when_written(tmp_path):
    from clo.evaluate.battles import pair_key
    from clo.evaluate.ratings import UNKNOWN_BASE, base_keys
    from clo.evaluate.schema import MIGRATIONS

    db = tmp_path / "v3.db"
    previous_schema_store(db)
    old = open_store(str(db), read_only=True)
    votes = old.votes()
    assert votes.iloc[0].outcome == "b" and votes.iloc[0].judge is None
    assert votes.iloc[0].pair_key == pair_key("ko", "p", "sft-ko", "x", "clo-ko", "y")
    assert old.judged_keys("judge-x", "clo-pairwise-1") == set()
    old.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == 3  # reading changed nothing
    conn.close()
    store = open_store(str(db))  # opened to write: migrated to the current schema, the old vote kept
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == len(MIGRATIONS) == 11
    conn.close()
    votes = store.votes()
    assert len(votes) == 1 and votes.iloc[0].judge is None and votes.iloc[0].lang_a == "ko"
    assert votes.iloc[0].base_model is None and base_keys(votes).iloc[0] == UNKNOWN_BASE  # never guessed
    assert pd.isna(votes.iloc[0].langid_version)  # judged before versions were kept
    assert votes.iloc[0].leak is None  # stored before leaks were checked: not checked again, rated as before
    assert votes.iloc[0].source_a is None and votes.iloc[0].source_b is None  # stored before hub adapters
    assert store.record_judgment(judgment()) and len(store.votes()) == 2
    b = battle(store)
    store.vote(b.id, "tie", voter="v1")  # people still vote on a migrated store
    assert store.votes()["pair_key"].notna().all()


def test_a_vote_keeps_the_detector_version_and_the_leaderboard_judges_older_ones_again(store, tmp_path):
    """The language stored with a battle carries the detector's version; the Leaderboard's fidelity takes a stored
    code as it is when this version stored it, and judges again what an older one (or none) stored."""
    from clo.evaluate.board import answer_fidelity
    from clo.evaluate.langid import VERSION

    english = {"sft-ko": "The capital of Japan is Tokyo.", "clo-ko": "일본의 수도는 도쿄입니다."}
    kw = dict(voter="v1", language="ko", prompt="일본의 수도는 어디인가요?", answers=english)
    b = store.create_battle(**kw, detected={"sft-ko": "ko", "clo-ko": "ko"})  # as if detected wrongly, by this version
    store.vote(b.id, "a", voter="v1")
    votes = store.votes()
    assert votes.iloc[0].langid_version == VERSION
    fid = answer_fidelity(votes).set_index("variant")
    assert fid.loc["sft-ko", "fidelity"] == 1.0  # this version's code stands: nothing is judged twice
    older = votes.assign(langid_version=VERSION - 1)
    fid = answer_fidelity(older).set_index("variant")
    assert fid.loc["sft-ko", "fidelity"] == 0.0 and fid.loc["clo-ko", "fidelity"] == 1.0  # judged again: English
    assert answer_fidelity(votes.assign(langid_version=None)).set_index("variant").loc["sft-ko", "fidelity"] == 0.0
    # a language lingua does not know keeps what the served model's own detector stored, whatever its version
    mini = older.assign(language="mini", lang_a="mini", lang_b="en")
    fid = answer_fidelity(mini).set_index("variant")
    assert {fid.loc[v, "fidelity"] for v in fid.index} == {1.0, 0.0}


def test_judge_votes_in_postgresql(postgres):
    s = open_store(postgres, seed=2)
    assert s.record_judgment(judgment("a", judge="pg-judge")) is True
    replica = open_store(postgres)
    assert replica.record_judgment(judgment("b", judge="pg-judge", first="sft-ko")) is False  # one verdict per pair
    votes = replica.votes()
    mine = votes[votes["judge"] == "pg-judge"]
    assert len(mine) == 1 and mine.iloc[0].outcome == "a"
    assert replica.judged_keys("pg-judge", "clo-pairwise-1") == {mine.iloc[0].pair_key}
    people = votes[votes["judge"].isna() & (votes["language"] == "ko") & votes["blind"]]
    assert sum(replica.vote_counts("ko").values()) == len(people)  # judge votes are not counted for the Arena's draw


def test_votes_keep_their_base_model_and_ratings_never_mix_bases(tmp_path, capsys):
    """Each vote records the base model behind its answers; votes on two bases are never rated together: the
    board refuses the mix, takes one base by name or fingerprint, and the command line prints one base after the
    other; a judge's verdict on a people's battle keeps that battle's base; the Arena draws pairs per base."""
    from clo.__main__ import main
    from clo.evaluate.board import leaderboard
    from clo.evaluate.judge.run import battle_items
    from clo.evaluate.ratings import BattlesError, bases, of_base

    db = str(tmp_path / "votes.db")
    store = open_store(db, seed=1)
    first, second = ("models/a", "sha256:" + "1" * 64), ("models/b", None)
    for i in range(6):
        for base in (first, second):
            b = battle(store, prompt=f"p{i}", base=base)
            store.vote(b.id, "a", voter="v1")
    votes = store.votes()
    assert set(votes.base_model) == {"models/a", "models/b"} and set(votes.base_hash.dropna()) == {first[1]}
    assert [b["votes"] for b in bases(votes)] == [6, 6]
    with pytest.raises(BattlesError, match="2 base models"):
        leaderboard(votes, "ko", n_bootstrap=10)
    by_name = leaderboard(votes, "ko", n_bootstrap=10, base="models/a")
    assert by_name["summary"].set_index("language").loc["ko", "rated"] == 6
    by_hash = leaderboard(votes, "ko", n_bootstrap=10, base=first[1])
    assert by_hash["counts"].equals(by_name["counts"])
    with pytest.raises(BattlesError, match="none of them"):
        of_base(votes, "models/c")
    assert store.vote_counts("ko", base="models/b") == {frozenset(("sft-ko", "clo-ko")): 6}
    assert store.vote_counts("ko", base="models/c") == {}
    [item] = [i for i in battle_items(votes) if i.prompt == "p0" and i.base[0] == "models/a"]
    assert item.base == first
    store.record_judgment(judgment(prompt="p0", base_model=item.base[0], base_hash=item.base[1]))
    assert store.votes().dropna(subset=["judge"]).iloc[0].base_hash == first[1]
    store.close()
    assert main(["leaderboard", "--db", db, "--lang", "ko", "--bootstrap", "10"]) in (0, None)
    out = capsys.readouterr().out
    assert out.count("# base model ") == 2 and "models/a (11111111): 7 votes" in out and "models/b: 6 votes" in out
    assert main(["leaderboard", "--db", db, "--base", "models/b", "--bootstrap", "10"]) in (0, None)
    assert "# base model" not in capsys.readouterr().out


# ---- FastChat's clean-battle export: its own rating code reads it and ranks as ours does ----

def test_the_fastchat_export_is_read_by_fastchats_own_ratings_in_our_order(tmp_path, capsys):
    """300 votes among four variants of known strength, plus a named vote, a leaked one and a judge's verdict:
    `votes export --format fastchat` writes the people's battles in FastChat's shape; FastChat's own
    `compute_elo_mle_with_tie` (fschat 0.2.36) on its anonymous ones ranks the variants as our Bradley–Terry does."""
    import json
    import math
    import random

    elo = pytest.importorskip("fastchat.serve.monitor.elo_analysis",
                              reason="fschat, scikit-learn and plotly are not installed (requirements-dev.txt has them)")
    from clo.__main__ import build_parser
    from clo.evaluate.board import leaderboard
    from clo.evaluate.judgments import Judgment
    from clo.evaluate.leaks import leak

    strength = {"clo-ko": 1.2, "sft-ko": 0.5, "base": 0.0, "clo-ko-old": -0.6}
    rng, store = random.Random(1), open_store(str(tmp_path / "votes.db"), seed=1)
    base = ("models/m", None)
    names = sorted(strength)
    for k in range(300):
        first, second = rng.sample(names, 2)
        answers = {first: f"{first} {k}", second: f"{second} {k}"}
        b = store.create_battle(voter=f"v{k % 40}", language="ko", prompt=f"질문 {k}", answers=answers, base=base)
        left, right = (first, second) if b.answer_a == answers[first] else (second, first)
        p = 1 / (1 + math.exp(strength[right] - strength[left]))
        x = rng.random()
        outcome = "tie" if x < 0.1 else "both_bad" if x < 0.14 else "a" if rng.random() < p else "b"
        store.vote(b.id, outcome, voter=f"v{k % 40}")
    named = store.create_battle(voter="n", language="ko", prompt="질문", answers={"base": "x", "sft-ko": "y"},
                                base=base, blind=False)
    store.vote(named.id, "a", voter="n")
    leaked = {"base": "I am SmolLM.", "clo-ko": "clo-ko here"}
    told = store.create_battle(voter="l", language="ko", prompt="질문?", answers=leaked, base=base,
                               leak=leak("질문?", leaked.values(), names, base[0]))
    store.vote(told.id, "a", voter="l")
    store.record_judgment(Judgment(judge="j", protocol="p", language="ko", prompt="q", variant_a="base",
                                   variant_b="sft-ko", answer_a="a", answer_b="b", outcome="a", reply="A",
                                   base_model=base[0]))
    out = tmp_path / "battles.json"
    args = build_parser().parse_args(["votes", "export", "--db", store.where, "--format", "fastchat", "--out", str(out)])
    args.func(args)
    assert "wrote 302 people's battles in FastChat's clean-battle shape" in capsys.readouterr().out

    battles = pd.read_json(out)  # as FastChat's elo_analysis reads a clean-battle file
    assert len(battles) == 302 and battles["anony"].sum() == 300  # the named and the leaked one are not anonymous
    assert set(battles["winner"]) == {"model_a", "model_b", "tie", "tie (bothbad)"}
    row = battles.iloc[0]
    assert row["conversation_a"][0]["role"] == "user" and row["conversation_a"][1]["role"] == "assistant"
    assert row["turn"] == 1 and row["language"] == "Korean" and row["judge"].startswith("arena_user_")
    assert not battles["judge"].str.contains("127.0.0.1").any()
    theirs = elo.compute_elo_mle_with_tie(battles[battles["anony"]])
    ours = leaderboard(store.votes(), "ko")["bradley_terry"]
    assert list(theirs.index) == list(ours["variant"]) == sorted(strength, key=strength.get, reverse=True)
    with pytest.raises(CLOError, match="FastChat's battle format; give --format fastchat"):
        from clo.evaluate.export import export_votes
        export_votes(store, tmp_path / "x.json")

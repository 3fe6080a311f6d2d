"""The vote store's tables and their versions: what a store file must be before clo.evaluate.store opens it.

    check_sqlite_file(path, read_only)   # refuse a folder, a foreign or newer file, before anything in it changes
    blank = migrate(store)               # bring the schema up to len(MIGRATIONS), or (read-only) only look

A store's schema version is the number of MIGRATIONS applied to it (table `schema_version`); SQLite files carry
APPLICATION_ID in their header, so a foreign database is refused untouched. Processes that open one store at once
(app replicas on one PostgreSQL database) migrate it one after another: SQLite's write lock, PostgreSQL's advisory
lock MIGRATION_LOCK. Before an older SQLite store is migrated it is copied to `<file>.bak-v<old version>` (never over
an existing file) and a line says so. A read-only store is never migrated: it is read with the columns it has.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from clo import CLOError
from clo.evaluate.snapshot import open_snapshot, shared_mount

if TYPE_CHECKING:
    from clo.evaluate.store import VoteStore

APPLICATION_ID = 0x434C4F31  # "CLO1" in the SQLite header: our files are recognisable, foreign ones refused
# PostgreSQL: the key of the transaction-level advisory lock a migration holds. Without it, app replicas started
# together on a new (or older) database ran the same CREATE TABLE / ALTER TABLE at once, and all but one stopped with
# a unique violation in PostgreSQL's catalog (pg_type_typname_nsp_index) or "column already exists"; with it, the
# first migrates and the others then find the schema current. SQLite's BEGIN IMMEDIATE serialises them already.
MIGRATION_LOCK = APPLICATION_ID
BATTLE_COLUMNS = ("id", "created_utc", "expires_utc", "voter", "language", "prompt", "variant_a", "variant_b",
                  "answer_a", "answer_b", "hash_a", "hash_b", "engine", "blind", "lang_a", "lang_b", "voter_address",
                  "langid_version", "source_a", "source_b")
VOTE_COLUMNS = ("id", "battle_id", "created_utc", "voter", "language", "prompt", "variant_a", "variant_b", "answer_a",
                "answer_b", "left_variant", "outcome", "engine", "hash_a", "hash_b", "blind", "lang_a", "lang_b",
                "voter_address", "judge", "judge_protocol", "judge_reply", "pair_key", "langid_version", "judge_orders",
                "judge_first", "judge_second", "judge_reply_second", "base_model", "base_hash", "leak", "source_a",
                "source_b")

# Each migration brings the schema from version i to i + 1; never edit one that has shipped.
MIGRATIONS = [
    """
    CREATE TABLE battles (
        id TEXT PRIMARY KEY, created_utc TEXT NOT NULL, expires_utc TEXT NOT NULL, voter TEXT NOT NULL,
        language TEXT NOT NULL, prompt TEXT NOT NULL, variant_a TEXT NOT NULL, variant_b TEXT NOT NULL,
        answer_a TEXT NOT NULL, answer_b TEXT NOT NULL, hash_a TEXT, hash_b TEXT, engine TEXT, blind INTEGER NOT NULL
    );
    CREATE TABLE votes (
        id TEXT PRIMARY KEY, battle_id TEXT NOT NULL UNIQUE REFERENCES battles(id), created_utc TEXT NOT NULL,
        voter TEXT NOT NULL, language TEXT NOT NULL, prompt TEXT NOT NULL, variant_a TEXT NOT NULL,
        variant_b TEXT NOT NULL, answer_a TEXT NOT NULL, answer_b TEXT NOT NULL, left_variant TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('a', 'b', 'tie', 'both_bad')), engine TEXT, hash_a TEXT,
        hash_b TEXT, blind INTEGER NOT NULL
    );
    CREATE INDEX votes_voter_time ON votes (voter, created_utc);
    CREATE INDEX votes_language ON votes (language);
    """,
    # 2: the detected language of each answer, found once when the battle is made (NULL on older rows)
    """
    ALTER TABLE battles ADD COLUMN lang_a TEXT;
    ALTER TABLE battles ADD COLUMN lang_b TEXT;
    ALTER TABLE votes ADD COLUMN lang_a TEXT;
    ALTER TABLE votes ADD COLUMN lang_b TEXT;
    """,
    # 3: the voter's address (a keyed hash) beside the session's, and the store's own secret for those hashes
    """
    CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    ALTER TABLE battles ADD COLUMN voter_address TEXT;
    ALTER TABLE votes ADD COLUMN voter_address TEXT;
    CREATE INDEX votes_address_time ON votes (voter_address, created_utc);
    """,
    # 4: judge votes (an LLM judge's verdicts, clo.evaluate.judge) beside the people's, and the key of what was judged
    """
    ALTER TABLE votes ADD COLUMN judge TEXT;
    ALTER TABLE votes ADD COLUMN judge_protocol TEXT;
    ALTER TABLE votes ADD COLUMN judge_reply TEXT;
    ALTER TABLE votes ADD COLUMN pair_key TEXT;
    CREATE UNIQUE INDEX votes_judge_pair ON votes (judge, judge_protocol, pair_key) WHERE judge IS NOT NULL;
    CREATE INDEX votes_pair ON votes (pair_key);
    """,
    # 5: a judge's unreadable replies, kept apart from the votes (never counted), each with when to ask again
    """
    CREATE TABLE judge_unreadable (
        judge TEXT NOT NULL, judge_protocol TEXT NOT NULL, pair_key TEXT NOT NULL, language TEXT NOT NULL,
        reply TEXT NOT NULL, attempts INTEGER NOT NULL, first_utc TEXT NOT NULL, last_utc TEXT NOT NULL,
        next_utc TEXT NOT NULL, PRIMARY KEY (judge, judge_protocol, pair_key)
    );
    """,
    # 6: the version of the language detector that judged lang_a and lang_b (clo.evaluate.langid.VERSION; NULL on
    # older rows), so what an older detector stored is judged again where it is shown
    """
    ALTER TABLE battles ADD COLUMN langid_version INTEGER;
    ALTER TABLE votes ADD COLUMN langid_version INTEGER;
    """,
    # 7: a judge asked in both orders: judge_orders = 2 (NULL on an older, single-order verdict), the verdict with
    # variant_a shown first and with variant_b shown first (each "a" or "b", naming the stored sides; NULL when the
    # answers were identical) and the second reply; `outcome` is the winner both agree on, a tie when they differ
    """
    ALTER TABLE votes ADD COLUMN judge_orders INTEGER;
    ALTER TABLE votes ADD COLUMN judge_first TEXT;
    ALTER TABLE votes ADD COLUMN judge_second TEXT;
    ALTER TABLE votes ADD COLUMN judge_reply_second TEXT;
    """,
    # 8: the base model the answers came from (its name as served, and clo.hub.model_fingerprint where known), so
    # votes on different bases are never rated together; NULL on older rows, read as "unknown base", never guessed
    """
    ALTER TABLE battles ADD COLUMN base_model TEXT;
    ALTER TABLE battles ADD COLUMN base_hash TEXT;
    ALTER TABLE votes ADD COLUMN base_model TEXT;
    ALTER TABLE votes ADD COLUMN base_hash TEXT;
    """,
    # 9: why a battle is not blind (clo.evaluate.leaks: an answer names a variant, the prompt asks who the model is),
    # NULL when nothing leaked; such votes are stored and counted, never rated. Older rows: NULL, not checked again
    """
    ALTER TABLE battles ADD COLUMN leak TEXT;
    ALTER TABLE votes ADD COLUMN leak TEXT;
    """,
    # 10: where an adapter fetched from the hub came from, "owner/name@commit" (clo.hub.fetch_adapter), per side;
    # NULL for the base, a local folder, and older rows
    """
    ALTER TABLE battles ADD COLUMN source_a TEXT;
    ALTER TABLE battles ADD COLUMN source_b TEXT;
    ALTER TABLE votes ADD COLUMN source_a TEXT;
    ALTER TABLE votes ADD COLUMN source_b TEXT;
    """,
    # 11: benchmark scores (python -m clo evaluate, clo.evaluate.benchmarks): one row per variant, task and metric,
    # with what makes it comparable (base fingerprint, adapter hash, task version, shots, limit, the items' hash);
    # an adapter with no effect has a row with effect 'no effect' and no metric, value or n
    """
    CREATE TABLE benchmarks (
        id TEXT PRIMARY KEY, created_utc TEXT NOT NULL, base_model TEXT NOT NULL, base_hash TEXT,
        variant TEXT NOT NULL, adapter_hash TEXT, source TEXT, task TEXT NOT NULL, task_version TEXT, language TEXT,
        num_fewshot INTEGER NOT NULL, item_limit INTEGER, metric TEXT, value DOUBLE PRECISION,
        stderr DOUBLE PRECISION, n INTEGER, chance DOUBLE PRECISION, items TEXT,
        effect TEXT NOT NULL CHECK (effect IN ('applied', 'no effect')), lm_eval TEXT NOT NULL, run_id TEXT NOT NULL
    );
    CREATE INDEX benchmarks_base ON benchmarks (base_model, base_hash)
    """,
]


def is_unique_violation(error: BaseException) -> bool:
    """Whether `error` is a UNIQUE or PRIMARY KEY constraint refusing a row, i.e. another writer (a process, a
    replica) stored the same row first: SQLite's IntegrityError of that kind, or psycopg's UniqueViolation."""
    if isinstance(error, sqlite3.IntegrityError):  # its extended result code (Python 3.11+), else SQLite's words
        name = getattr(error, "sqlite_errorname", None)
        if name is None:
            return str(error).startswith("UNIQUE constraint failed")
        return name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")
    return getattr(error, "sqlstate", None) == "23505"  # psycopg.errors.UniqueViolation (no psycopg import needed)


def check_version(version: int, where: str) -> None:
    """Refuse a store whose schema is newer than this code's."""
    if version > len(MIGRATIONS):
        raise CLOError(f"the vote store {where} has schema version {version}, newer than this code's "
                       f"{len(MIGRATIONS)}; it was left untouched: upgrade clo, or choose another --db")


def check_sqlite_file(path: Path, read_only: bool) -> None:
    """Refuse a file that is not ours: not SQLite at all, another application's database, or a store of a newer
    schema; all before anything in it is changed. A missing or empty file is fine (it becomes a new store), unless
    `read_only`: then a missing one is refused."""
    if path.is_dir():
        raise CLOError(f"the vote store {path} is a folder: give --db a file, e.g. {path / 'votes.db'}")
    if not path.exists() or path.stat().st_size == 0:
        if read_only and not path.exists():
            raise CLOError(f"there is no vote store at {path}: give --db the file the app records votes in")
        if not read_only:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CLOError(f"cannot create the folder of the vote store {path} ({e.strerror}): "
                               "choose another --db") from None
        return
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
    except OSError as e:
        raise CLOError(f"cannot read the vote store {path} ({e.strerror}): check its permissions") from None
    if not header.startswith(b"SQLite format 3\x00"):
        raise CLOError(f"{path} is not a vote store (not an SQLite database); it was left untouched")
    try:  # read-only: nothing about a foreign file may change, not even its journal mode
        probe = open_read_only(path)
        try:
            app_id = probe.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = (probe.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
                       if "schema_version" in tables else 0)
        finally:
            probe.close()
    except sqlite3.DatabaseError as e:
        raise CLOError(f"{path} is not a usable vote store ({e}); it was left untouched") from None
    if app_id != APPLICATION_ID and tables:
        raise CLOError(f"{path} is an SQLite database of another application (application_id {app_id:#x}); "
                       "it was left untouched: choose another --db")
    check_version(version, str(path))


def open_read_only(path: Path, **kwargs) -> sqlite3.Connection:
    """A connection that cannot change the file: `mode=ro` and query_only. A WAL-mode file in a folder this process
    may not write (no -shm can be made) is opened `immutable` instead, when it has no -wal file (so nothing is
    waiting to be checkpointed and no writer has it open). A file on a network or FUSE mount is a snapshot, read
    `immutable` without locks or journals there (clo.evaluate.snapshot.open_snapshot)."""
    if shared_mount(path):
        return open_snapshot(path, **kwargs)
    conn = sqlite3.connect(_sqlite_uri(path, "mode=ro"), uri=True, **kwargs)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        if Path(f"{path}-wal").exists():
            raise
        conn = sqlite3.connect(_sqlite_uri(path, "immutable=1"), uri=True, **kwargs)
    conn.execute("PRAGMA query_only=ON")
    return conn


def _sqlite_uri(path: Path, query: str) -> str:
    """An SQLite URI for `path` (any characters in it quoted) with `query`, e.g. "mode=ro"."""
    return f"file:{quote(str(Path(path).resolve()))}?{query}"


def migrate(store: VoteStore) -> bool:
    """Bring `store`'s schema to len(MIGRATIONS) in one transaction (an older SQLite store backed up first, and a
    line on stderr saying so); a read-only store is only looked at. Returns whether the store is blank: read-only
    and never initialised, so no tables and no votes."""
    if store.read_only:  # only look: an older schema is read as it is (votes() takes the columns it has)
        if not store._has_table("schema_version"):
            return True
        check_version(store._read("SELECT MAX(version) FROM schema_version")[0][0][0] or 0, store.where)
        return False
    with store._transaction() as cur:
        if store.kind == "postgresql":  # replicas starting at once migrate one after another (see MIGRATION_LOCK)
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        cur.execute("SELECT version FROM schema_version")
        row = cur.fetchone()
        version = row[0] if row else 0
        check_version(version, store.where)
        upgrade = 0 < version < len(MIGRATIONS)  # a store with votes of an older schema (0: a new one)
        backup = _backup(store.path, version) if upgrade and store.kind == "sqlite" else None
        for migration in MIGRATIONS[version:]:
            for statement in filter(str.strip, migration.split(";")):
                cur.execute(statement)
        if row is None:
            cur.execute(store._sql("INSERT INTO schema_version VALUES (?)"), (len(MIGRATIONS),))
        else:
            cur.execute(store._sql("UPDATE schema_version SET version = ?"), (len(MIGRATIONS),))
        if store.kind == "sqlite":
            cur.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    if upgrade:
        kept = f"backup at {backup}" if backup else "no backup made here (PostgreSQL: keep your own, pg_dump)"
        print(f"[clo] migrated {store.where} from schema v{version} to v{len(MIGRATIONS)}; {kept}",
              file=sys.stderr, flush=True)
    return False


def _backup(path: Path, version: int) -> Path:
    """Copy the store as it is, before a migration changes it, to `<store>.bak-v<version>` beside it, with
    SQLite's backup API (a consistent copy, the write-ahead log included), read through a connection of its
    own while the migration's holds the write lock. An existing file is never written over: the next free name
    is taken (`.bak-v3.1`, `.bak-v3.2`, ...). A copy that cannot be made stops the migration, the store left
    as it was."""
    first = path.with_name(f"{path.name}.bak-v{version}")
    target, n, claimed = first, 0, False
    try:
        while not claimed:
            try:  # O_EXCL: the name is claimed only if no file has it
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, path.stat().st_mode & 0o777))
                claimed = True
            except FileExistsError:
                n += 1
                target = first.with_name(f"{first.name}.{n}")
        source, copy = sqlite3.connect(path, timeout=60), sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
            source.close()
    except (OSError, sqlite3.Error) as e:
        if claimed:  # the partial copy is ours
            target.unlink(missing_ok=True)
        raise CLOError(f"cannot back up the vote store {path} to {target} before migrating it from schema "
                       f"v{version} ({getattr(e, 'strerror', None) or e}); it was left untouched: make room or "
                       "make its folder writable") from None
    return target

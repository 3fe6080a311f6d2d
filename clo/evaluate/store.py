"""Human pairwise judgments: a durable vote store and blind battles.

    store = open_store("sqlite:///votes.db")                      # or postgresql://user@host/db for many replicas
    battle = store.create_battle(voter="session-1", language="ko", prompt="...", answers={"sft-ko": "...", "clo-ko": "..."})
    battle.answer_a, battle.answer_b                              # what the voter sees; identities stay here
    reveal = store.vote(battle.id, "a", voter="session-1")        # once per battle -> {"variant_a": ..., ...}
    store.votes()                                                 # a DataFrame for clo.evaluate.ratings

A battle's identities are kept on the server and returned only by `vote`. Battle ids are random UUIDs tied
to the voter, so a vote cannot be cast on someone else's battle or twice: the votes table holds at most one row
per battle (a UNIQUE constraint, so it holds across processes and replicas). A voter is a session from a client
address; the store keeps only keyed hashes of both (HMAC with a secret made once per store and kept in it, or
CLO_SECRET), never a raw address, and limits votes per voter and per address (`Limits`), so a fresh session
does not reset a limit.
SQLite runs in WAL mode with synchronous=FULL: a vote that `vote` returned from survives a crash. `store.close()`
(the app calls it when it stops) lets the writes under way finish, folds the log into the file and closes every
thread's connection, so the file alone holds every vote. Before an older store is migrated it is copied to
`<file>.bak-v<old version>` (never over an existing file) and a line says so.
`open_store(url, read_only=True)` (the command line's leaderboard and export) changes nothing: SQLite is opened with
`mode=ro` and `query_only`, PostgreSQL with read-only transactions; no journal mode is set, no schema migrated, no
secret made, and a store from an older schema is read with the columns it has.
Outcomes: "a" (left better), "b" (right better), "tie", "both_bad".

Judge votes (clo.evaluate.judge) live in the same table, flagged by `judge` (the judge's model name; NULL on a person's vote):

    store.record_judgment(Judgment(...))   # False when this judge already judged this pair (a rerun resumes)
    store.judged_keys("judge-model", "clo-pairwise-1")   # pair keys already judged, to skip them
    store.record_unreadable(Judgment(..., outcome="unreadable", reply=raw))   # kept apart, asked again later
    store.unreadable("judge-model", "clo-pairwise-1")    # those replies: attempts so far and when the next is due

An unreadable reply is no vote: it lives in its own table (`judge_unreadable`), never among the votes, so no rating,
tally or agreement can count it; a readable verdict on the same pair later replaces it.

They are exported with the human votes and kept apart from them everywhere else: clo.evaluate.ratings rates the human votes
unless asked for a judge's, and `vote_counts` (which pairs the Arena draws) counts only people. Every vote carries
`pair_key` (`pair_key()`: language, prompt, both variants and answers, sides ignored), on which a judge's verdict and
the people's votes on the same answers meet (clo.evaluate.ratings.agreement) and a judge's rerun skips what it judged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import random
import secrets
import sqlite3
import sys
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlparse

from clo import CLOError
from clo.engines.base import prompt_text
from clo.files import atomic_path, check_output_file

OUTCOMES = ("a", "b", "tie", "both_bad")
PRUNE_EVERY_S = 60.0  # expired, unvoted battles are deleted at most this often (when a battle is made)
APPLICATION_ID = 0x434C4F31  # "CLO1" in the SQLite header: our files are recognisable, foreign ones refused
VOTE_COLUMNS = ("id", "battle_id", "created_utc", "voter", "language", "prompt", "variant_a", "variant_b", "answer_a",
                "answer_b", "left_variant", "outcome", "engine", "hash_a", "hash_b", "blind", "lang_a", "lang_b",
                "voter_address", "judge", "judge_protocol", "judge_reply", "pair_key")
JUDGE_VOTER = "judge"  # the voter of a judge vote: not a person, so no keyed hash and no rate limit

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
]
UNREADABLE_REPLY_CHARS = 500  # an unreadable reply is kept this long (its start, then "…")


def keyed_hash(secret: str, raw: str) -> str:
    """A stable pseudonym for a session or an address under `secret`; the raw value is never stored."""
    return hmac.new(secret.encode(), raw.encode(), hashlib.sha256).hexdigest()[:24]


def pair_key(language: str, prompt: str, variant_a: str, answer_a: str, variant_b: str, answer_b: str) -> str:
    """What was judged, whichever side each answer was shown on: sha256 of the language, the prompt and the two
    (variant, answer) pairs in name order. A person's vote and a judge's verdict on the same answers share it."""
    sides = sorted([(str(variant_a), str(answer_a)), (str(variant_b), str(answer_b))])
    return hashlib.sha256(json.dumps([language, prompt, sides], ensure_ascii=False).encode()).hexdigest()[:32]


@dataclass
class Judgment:
    """A judge's verdict on two answers to one prompt: `variant_a` was shown as the first candidate, `variant_b` as
    the second; outcome "a", "b" or "tie" (the judge is not asked when the answers are identical), or "unreadable"
    for a reply kept by `record_unreadable` (never a vote)."""

    judge: str  # the judge's model name at its endpoint
    protocol: str  # the prompt and parsing it was asked with (clo.evaluate.judge.Protocol.name)
    language: str
    prompt: str
    variant_a: str
    variant_b: str
    answer_a: str
    answer_b: str
    outcome: str
    reply: str | None = None  # what the judge answered (a label, with its probability when log-probs were read)
    hash_a: str | None = None
    hash_b: str | None = None
    engine: str | None = None

    @property
    def pair_key(self) -> str:
        return pair_key(self.language, self.prompt, self.variant_a, self.answer_a, self.variant_b, self.answer_b)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Battle:
    """What a voter may see: an id and two anonymous answers (identities are kept in the store)."""

    id: str
    language: str
    prompt: str
    answer_a: str
    answer_b: str
    expires_utc: str


@dataclass
class Limits:
    max_prompt_chars: int = 4000
    battle_ttl_s: float = 3600.0
    votes_per_window: int = 60  # per voter (a session from an address)
    window_s: float = 600.0
    votes_per_address: int = 1200  # per client address, all its sessions together (a room behind one NAT shares it)


class VoteStore:
    """A vote store on SQLite (`sqlite:///path`) or PostgreSQL (`postgresql://...`)."""

    def __init__(self, url: str, limits: Limits | None = None, seed: int | None = None, read_only: bool = False):
        self.url, self.limits, self.read_only = url, limits or Limits(), read_only
        self.blank = False  # read-only and never initialised: no tables, so no votes
        self.pruned_at = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        self.rng = random.Random(seed)
        self.local = threading.local()  # one connection per thread
        self.connections: list = []  # every thread's, so `close` closes them all
        self.gate = threading.Condition()  # guards `busy` and `closed`: close waits for the reads and writes under way
        self.busy, self.closed = 0, False
        parsed = urlparse(url)
        if parsed.scheme == "sqlite":
            self.kind, self.path, self.ph = "sqlite", Path(url.split("sqlite:///", 1)[-1]), "?"
            self.where = str(self.path)
            self._check_sqlite_file()
        elif parsed.scheme in ("postgresql", "postgres"):
            self.kind, self.path, self.ph = "postgresql", None, "%s"
            self.where = _redacted(url)
        else:
            raise CLOError(f"unknown vote store URL {_redacted(url)!r}: use sqlite:///path/votes.db or "
                           "postgresql://user@host/db")
        self._migrate()
        self.secret = os.environ.get("CLO_SECRET") or (None if read_only else self._stored_secret())

    def pseudonyms(self, voter: str, address: str | None) -> tuple[str, str | None]:
        """(voter key, address key): keyed hashes of the session from its address, and of the address."""
        self._check_writable()
        if address is None:
            return keyed_hash(self.secret, voter), None
        return keyed_hash(self.secret, f"{address}|{voter}"), keyed_hash(self.secret, address)

    # ---- connections ----
    def _connect(self):
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            return conn
        # check_same_thread=False: each thread uses only its own connection, but `close` closes them all from one
        if self.kind == "sqlite" and self.read_only:  # nothing in the file may change, not even its journal mode
            conn = _open_read_only(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        elif self.kind == "sqlite":
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        else:
            try:
                import psycopg
            except ImportError:
                raise CLOError(f"the vote store {self.where} is PostgreSQL, which needs psycopg: "
                               "pip install 'psycopg[binary]'") from None
            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                if self.read_only:
                    conn.execute("SET default_transaction_read_only = on")
            except psycopg.Error as e:  # the URL's password is never shown, even if the driver echoes it
                reason = _scrub(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__, self.url)
                raise CLOError(f"cannot connect to the vote store {self.where} ({reason}): check its host, port, "
                               "database and credentials in --db / CLO_DB") from None
        self.local.conn = conn
        with self.gate:
            self.connections.append(conn)
        return conn

    @contextmanager
    def _using(self):
        """This thread's connection, counted as busy until the block ends, so `close` waits for it; refused once the
        store is closed."""
        with self.gate:
            if self.closed:
                raise CLOError(f"the vote store {self.where} is closed (the app is stopping): nothing was recorded")
            self.busy += 1
        try:
            yield self._connect()
        finally:
            with self.gate:
                self.busy -= 1
                self.gate.notify_all()

    def _check_sqlite_file(self) -> None:
        """Refuse a file that is not ours: not SQLite at all, another application's database, or a store of a newer
        schema; all before anything in it is changed."""
        if self.path.is_dir():
            raise CLOError(f"the vote store {self.path} is a folder: give --db a file, e.g. {self.path / 'votes.db'}")
        if not self.path.exists() or self.path.stat().st_size == 0:
            if self.read_only and not self.path.exists():
                raise CLOError(f"there is no vote store at {self.path}: give --db the file the app records votes in")
            if not self.read_only:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise CLOError(f"cannot create the folder of the vote store {self.path} ({e.strerror}): "
                                   "choose another --db") from None
            return
        try:
            with open(self.path, "rb") as fh:
                header = fh.read(100)
        except OSError as e:
            raise CLOError(f"cannot read the vote store {self.path} ({e.strerror}): check its permissions") from None
        if not header.startswith(b"SQLite format 3\x00"):
            raise CLOError(f"{self.path} is not a vote store (not an SQLite database); it was left untouched")
        try:  # read-only: nothing about a foreign file may change, not even its journal mode
            probe = _open_read_only(self.path)
            try:
                app_id = probe.execute("PRAGMA application_id").fetchone()[0]
                tables = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                version = (probe.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
                           if "schema_version" in tables else 0)
            finally:
                probe.close()
        except sqlite3.DatabaseError as e:
            raise CLOError(f"{self.path} is not a usable vote store ({e}); it was left untouched") from None
        if app_id != APPLICATION_ID and tables:
            raise CLOError(f"{self.path} is an SQLite database of another application (application_id {app_id:#x}); "
                           "it was left untouched: choose another --db")
        self._check_version(version)

    def _check_version(self, version: int) -> None:
        if version > len(MIGRATIONS):
            raise CLOError(f"the vote store {self.where} has schema version {version}, newer than this code's "
                           f"{len(MIGRATIONS)}; it was left untouched: upgrade clo, or choose another --db")

    def _check_writable(self) -> None:
        if self.read_only:
            raise CLOError(f"the vote store {self.where} was opened read-only: open it without read_only to record votes")

    @contextmanager
    def _transaction(self):
        self._check_writable()
        with self._using() as conn, _Transaction(conn, self.kind) as cur:
            yield cur

    def _read(self, query: str, args: tuple = ()) -> tuple[list, list[str]]:
        """Rows and column names of a read: a plain snapshot (WAL lets it run beside writers), never the write lock."""
        with self._using() as conn:
            cur = conn.cursor()
            try:
                cur.execute(self._sql(query), args)
                return cur.fetchall(), [d[0] for d in cur.description]
            finally:
                cur.close()

    def _sql(self, text: str) -> str:
        return text.replace("?", self.ph)

    def _migrate(self) -> None:
        if self.read_only:  # only look: an older schema is read as it is (votes() takes the columns it has)
            exists = ("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
                      if self.kind == "sqlite" else "SELECT COUNT(*) FROM information_schema.tables "
                      "WHERE table_name = 'schema_version' AND table_schema = current_schema()")
            self.blank = not self._read(exists)[0][0][0]
            if not self.blank:
                self._check_version(self._read("SELECT MAX(version) FROM schema_version")[0][0][0] or 0)
            return
        with self._transaction() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            cur.execute("SELECT version FROM schema_version")
            row = cur.fetchone()
            version = row[0] if row else 0
            self._check_version(version)
            upgrade = 0 < version < len(MIGRATIONS)  # a store with votes of an older schema (0: a new one)
            backup = self._backup(version) if upgrade and self.kind == "sqlite" else None
            for migration in MIGRATIONS[version:]:
                for statement in filter(str.strip, migration.split(";")):
                    cur.execute(statement)
            if row is None:
                cur.execute(self._sql("INSERT INTO schema_version VALUES (?)"), (len(MIGRATIONS),))
            else:
                cur.execute(self._sql("UPDATE schema_version SET version = ?"), (len(MIGRATIONS),))
            if self.kind == "sqlite":
                cur.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        if upgrade:
            kept = f"backup at {backup}" if backup else "no backup made here (PostgreSQL: keep your own, pg_dump)"
            print(f"[clo] migrated {self.where} from schema v{version} to v{len(MIGRATIONS)}; {kept}",
                  file=sys.stderr, flush=True)

    def _backup(self, version: int) -> Path:
        """Copy the store as it is, before a migration changes it, to `<store>.bak-v<version>` beside it, with
        SQLite's backup API (a consistent copy, the write-ahead log included), read through a connection of its
        own while the migration's holds the write lock. An existing file is never written over: the next free name
        is taken (`.bak-v3.1`, `.bak-v3.2`, ...). A copy that cannot be made stops the migration, the store left
        as it was."""
        first = self.path.with_name(f"{self.path.name}.bak-v{version}")
        target, n, claimed = first, 0, False
        try:
            while not claimed:
                try:  # O_EXCL: the name is claimed only if no file has it
                    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.path.stat().st_mode & 0o777))
                    claimed = True
                except FileExistsError:
                    n += 1
                    target = first.with_name(f"{first.name}.{n}")
            source, copy = sqlite3.connect(self.path, timeout=60), sqlite3.connect(target)
            try:
                source.backup(copy)
            finally:
                copy.close()
                source.close()
        except (OSError, sqlite3.Error) as e:
            if claimed:  # the partial copy is ours
                target.unlink(missing_ok=True)
            raise CLOError(f"cannot back up the vote store {self.path} to {target} before migrating it from schema "
                           f"v{version} ({getattr(e, 'strerror', None) or e}); it was left untouched: make room or "
                           "make its folder writable") from None
        return target

    def _stored_secret(self) -> str:
        """The store's own secret, made on first use by whichever process gets there first."""
        with self._transaction() as cur:
            cur.execute(self._sql("INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"),
                        ("voter_key", secrets.token_hex(32)))
            cur.execute(self._sql("SELECT value FROM secrets WHERE name = ?"), ("voter_key",))
            return cur.fetchone()[0]

    # ---- battles ----
    def vote_counts(self, language: str) -> dict[frozenset, int]:
        rows, _ = self._read("SELECT variant_a, variant_b, COUNT(*) FROM votes WHERE language = ? AND blind = 1 "
                             "AND judge IS NULL GROUP BY variant_a, variant_b", (language,))
        counts: dict[frozenset, int] = {}
        for a, b, n in rows:
            counts[frozenset((a, b))] = counts.get(frozenset((a, b)), 0) + n
        return counts

    def count(self) -> tuple[int, str | None]:
        """(number of votes, id of the newest): changes exactly when a vote is added, for caches keyed on it."""
        if self.blank:
            return 0, None
        rows, _ = self._read("SELECT COUNT(*), MAX(created_utc || id) FROM votes")
        return int(rows[0][0]), rows[0][1]

    def draw_pair(self, variants: list[str], language: str, exclude=()) -> tuple[str, str]:
        """Two variants, favouring pairs with fewer blind votes in `language` (weight 1 / (1 + votes)); pairs in
        `exclude` (a collection of frozensets) are not drawn."""
        if len(set(variants)) < 2:
            raise CLOError("a battle needs at least two variants")
        counts = self.vote_counts(language)
        names = sorted(set(variants))
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :] if frozenset((a, b)) not in exclude]
        if not pairs:
            raise CLOError("every pair of variants has been tried")
        weights = [1.0 / (1 + counts.get(frozenset(p), 0)) for p in pairs]
        return self.rng.choices(pairs, weights)[0]

    def create_battle(self, voter: str, language: str, prompt: str, answers: dict[str, str],
                      hashes: dict[str, str | None] | None = None, engine: str | None = None, blind: bool = True,
                      detected: dict[str, str] | None = None, address: str | None = None) -> Battle:
        """Store a battle between the two variants of `answers`, placed left/right at random, owned by session
        `voter` from `address`; `detected` holds each answer's language code (clo.evaluate.langid), kept with the vote so no
        one detects it again."""
        if len(answers) != 2:
            raise CLOError(f"a battle has exactly two answers, got {len(answers)}")
        self._check_prompt(prompt)
        if (now_utc() - self.pruned_at).total_seconds() > PRUNE_EVERY_S:  # unvoted battles do not pile up
            self.prune()
        left, right = self.rng.sample(sorted(answers), 2)
        created = now_utc()
        battle = Battle(str(uuid.uuid4()), language, prompt, answers[left], answers[right],
                        (created + dt.timedelta(seconds=self.limits.battle_ttl_s)).isoformat())
        hashes, detected = hashes or {}, detected or {}
        who, where = self.pseudonyms(voter, address)
        with self._transaction() as cur:
            cur.execute(self._sql("INSERT INTO battles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                        (battle.id, created.isoformat(), battle.expires_utc, who, language, prompt, left, right,
                         battle.answer_a, battle.answer_b, hashes.get(left), hashes.get(right), engine, int(blind),
                         detected.get(left), detected.get(right), where))
        return battle

    def _check_prompt(self, prompt: str) -> None:
        if not prompt or not prompt_text(prompt):  # nothing printable (controls, NULs, zero-width characters)
            raise CLOError("empty prompt")
        if len(prompt) > self.limits.max_prompt_chars:
            raise CLOError(f"prompt of {len(prompt)} characters is over the limit of {self.limits.max_prompt_chars}")

    def prune(self) -> int:
        """Delete the battles that expired without a vote (they can no longer be voted on); returns how many."""
        with self._transaction() as cur:
            cur.execute(self._sql("DELETE FROM battles WHERE expires_utc < ? AND id NOT IN (SELECT battle_id FROM votes)"),
                        (now_utc().isoformat(),))
            self.pruned_at = now_utc()
            return cur.rowcount

    def discard(self, battle_id: str, voter: str, address: str | None = None) -> None:
        """Drop a battle its voter skipped: it records nothing and can no longer be voted on."""
        with self._transaction() as cur:
            cur.execute(self._sql("DELETE FROM battles WHERE id = ? AND voter = ? AND id NOT IN "
                                  "(SELECT battle_id FROM votes)"), (str(battle_id), self.pseudonyms(voter, address)[0]))

    # ---- votes ----
    def vote(self, battle_id: str, outcome: str, voter: str, address: str | None = None) -> dict:
        """Record the voter's judgment of a battle, once; returns the reveal (both variants and the outcome)."""
        if outcome not in OUTCOMES:
            raise CLOError(f"unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}")
        who, where = self.pseudonyms(voter, address)
        now = now_utc()
        with self._transaction() as cur:
            cur.execute(self._sql("SELECT * FROM battles WHERE id = ?"), (str(battle_id),))
            row = cur.fetchone()
            if row is None:
                raise CLOError(f"unknown battle {battle_id!r}")
            b = dict(zip([d[0] for d in cur.description], row))
            if b["voter"] != who:
                raise CLOError(f"battle {battle_id} belongs to another session")
            if dt.datetime.fromisoformat(b["expires_utc"]) < now:
                raise CLOError(f"battle {battle_id} expired at {b['expires_utc']}; start a new one")
            cur.execute(self._sql("SELECT 1 FROM votes WHERE battle_id = ?"), (b["id"],))
            if cur.fetchone():
                raise CLOError(f"battle {battle_id} already has a vote")
            self._check_rate(cur, now, "voter", who, self.limits.votes_per_window, "this session")
            if where is not None:
                self._check_rate(cur, now, "voter_address", where, self.limits.votes_per_address, "this network address")
            record = (str(uuid.uuid4()), b["id"], now.isoformat(), who, b["language"], b["prompt"], b["variant_a"],
                      b["variant_b"], b["answer_a"], b["answer_b"], b["variant_a"], outcome, b["engine"], b["hash_a"],
                      b["hash_b"], b["blind"], b["lang_a"], b["lang_b"], where, None, None, None,
                      pair_key(b["language"], b["prompt"], b["variant_a"], b["answer_a"], b["variant_b"], b["answer_b"]))
            try:
                cur.execute(self._sql(f"INSERT INTO votes ({', '.join(VOTE_COLUMNS)}) VALUES ({', '.join('?' * len(VOTE_COLUMNS))})"),
                            record)
            except Exception as e:  # the UNIQUE constraint, when another process won the race
                if "unique" in str(e).lower():
                    raise CLOError(f"battle {battle_id} already has a vote") from None
                raise
        return {"battle_id": b["id"], "variant_a": b["variant_a"], "variant_b": b["variant_b"], "outcome": outcome}

    # ---- judge votes ----
    def record_judgment(self, judgment: Judgment) -> bool:
        """Store a judge's verdict as a judge vote (with a battle row of its own, so every vote has one); returns
        False, storing nothing, when this judge already judged this pair under this protocol."""
        j = judgment
        if j.outcome not in ("a", "b", "tie"):
            raise CLOError(f"unknown judge outcome {j.outcome!r}; a judge answers a, b or tie")
        if not j.judge or not j.judge.strip():
            raise CLOError("a judge vote needs the judge's name (its model name at the endpoint)")
        if j.variant_a == j.variant_b:
            raise CLOError(f"a judgment puts {j.variant_a!r} against itself")
        self._check_prompt(j.prompt)
        key, now = j.pair_key, now_utc()
        battle_id = str(uuid.uuid4())
        try:
            with self._transaction() as cur:
                cur.execute(self._sql("SELECT 1 FROM votes WHERE judge = ? AND judge_protocol = ? AND pair_key = ?"),
                            (j.judge, j.protocol, key))
                if cur.fetchone():
                    return False
                cur.execute(self._sql("INSERT INTO battles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                            (battle_id, now.isoformat(), now.isoformat(), JUDGE_VOTER, j.language, j.prompt, j.variant_a,
                             j.variant_b, j.answer_a, j.answer_b, j.hash_a, j.hash_b, j.engine, 1, None, None, None))
                record = (str(uuid.uuid4()), battle_id, now.isoformat(), JUDGE_VOTER, j.language, j.prompt, j.variant_a,
                          j.variant_b, j.answer_a, j.answer_b, j.variant_a, j.outcome, j.engine, j.hash_a, j.hash_b, 1,
                          None, None, None, j.judge, j.protocol, j.reply, key)
                cur.execute(self._sql(f"INSERT INTO votes ({', '.join(VOTE_COLUMNS)}) "
                                      f"VALUES ({', '.join('?' * len(VOTE_COLUMNS))})"), record)
                cur.execute(self._sql("DELETE FROM judge_unreadable WHERE judge = ? AND judge_protocol = ? "
                                      "AND pair_key = ?"), (j.judge, j.protocol, key))
        except Exception as e:  # the unique index, when another process stored the same judgment first
            if "unique" in str(e).lower():
                return False
            raise
        return True

    def judged_keys(self, judge: str, protocol: str) -> set[str]:
        """The pair keys `judge` has judged under `protocol`: a rerun skips them."""
        if self.blank or not self._has_judge_columns():
            return set()
        rows, _ = self._read("SELECT pair_key FROM votes WHERE judge = ? AND judge_protocol = ?", (judge, protocol))
        return {r[0] for r in rows}

    def _has_judge_columns(self) -> bool:
        return "judge" in self._read("SELECT * FROM votes WHERE 1 = 0")[1]

    def record_unreadable(self, judgment: Judgment, first_retry_s: float = 60.0, max_retry_s: float = 3600.0) -> int:
        """Keep a judge's unreadable reply to a pair (`judgment.reply`, its first UNREADABLE_REPLY_CHARS), apart from
        the votes; the pair is due again `first_retry_s` after its first attempt, twice as long after each further
        one, at most `max_retry_s`. Returns the attempts made on it so far."""
        j = judgment
        if j.outcome != "unreadable":
            raise CLOError(f"record_unreadable keeps unreadable replies, not a verdict {j.outcome!r}")
        reply = str(j.reply or "")
        if len(reply) > UNREADABLE_REPLY_CHARS:
            reply = reply[:UNREADABLE_REPLY_CHARS] + "…"
        key, now = j.pair_key, now_utc()
        try:
            with self._transaction() as cur:
                cur.execute(self._sql("SELECT attempts, first_utc FROM judge_unreadable WHERE judge = ? AND "
                                      "judge_protocol = ? AND pair_key = ?"), (j.judge, j.protocol, key))
                row = cur.fetchone()
                attempts, first = (row[0] + 1, row[1]) if row else (1, now.isoformat())
                wait = min(max_retry_s, first_retry_s * 2 ** (attempts - 1))
                due = (now + dt.timedelta(seconds=wait)).isoformat()
                if row:
                    cur.execute(self._sql("UPDATE judge_unreadable SET reply = ?, attempts = ?, last_utc = ?, "
                                          "next_utc = ? WHERE judge = ? AND judge_protocol = ? AND pair_key = ?"),
                                (reply, attempts, now.isoformat(), due, j.judge, j.protocol, key))
                else:
                    cur.execute(self._sql("INSERT INTO judge_unreadable VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                                (j.judge, j.protocol, key, j.language, reply, attempts, first, now.isoformat(), due))
        except Exception as e:  # the primary key, when another replica kept the same pair's first reply just now
            if "unique" in str(e).lower():
                return 1
            raise
        return attempts

    def unreadable(self, judge: str | None = None, protocol: str | None = None):
        """The unreadable replies kept (of `judge` under `protocol`, when given) as a pandas DataFrame: judge,
        judge_protocol, pair_key, language, reply, attempts, first_utc, last_utc, next_utc (when it is due again)."""
        import pandas as pd

        columns = ["judge", "judge_protocol", "pair_key", "language", "reply", "attempts", "first_utc", "last_utc",
                   "next_utc"]
        if self.blank or not self._has_table("judge_unreadable"):
            return pd.DataFrame(columns=columns)
        where = [(c, v) for c, v in (("judge", judge), ("judge_protocol", protocol)) if v is not None]
        query = f"SELECT {', '.join(columns)} FROM judge_unreadable"
        if where:
            query += " WHERE " + " AND ".join(f"{c} = ?" for c, _ in where)
        rows, _ = self._read(query + " ORDER BY last_utc", tuple(v for _, v in where))
        return pd.DataFrame(rows, columns=columns)

    def _has_table(self, name: str) -> bool:
        query = ("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?" if self.kind == "sqlite" else
                 "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = current_schema()")
        return bool(self._read(query, (name,))[0][0][0])

    def _check_rate(self, cur, now: dt.datetime, column: str, key: str, limit: int, who: str) -> None:
        """Refuse a vote over `limit` in the window, saying when the oldest counted vote leaves it."""
        since = (now - dt.timedelta(seconds=self.limits.window_s)).isoformat()
        cur.execute(self._sql(f"SELECT COUNT(*), MIN(created_utc) FROM votes WHERE {column} = ? AND created_utc > ?"),
                    (key, since))
        count, oldest = cur.fetchone()
        if count >= limit:
            wait = self.limits.window_s - (now - dt.datetime.fromisoformat(oldest)).total_seconds()
            raise CLOError(f"too many votes from {who}: at most {limit} per {self.limits.window_s / 60:.0f} minutes; "
                           f"try again in {max(1, int(wait) + 1)} s")

    def votes(self, language: str | None = None):
        """All votes, people's and judges', as a pandas DataFrame (columns VOTE_COLUMNS; blind as bool; `judge` None
        on a person's vote; `pair_key` computed for votes stored before it was)."""
        import pandas as pd

        if self.blank:
            return pd.DataFrame(columns=list(VOTE_COLUMNS)).astype({"blind": bool})
        columns = list(VOTE_COLUMNS)
        if self.read_only:  # a store of an older schema is not migrated here: its missing columns read as None
            present = set(self._read("SELECT * FROM votes WHERE 1 = 0")[1])
            columns = [c for c in VOTE_COLUMNS if c in present]
        query, args = f"SELECT {', '.join(columns)} FROM votes", ()
        if language:
            query, args = query + " WHERE language = ?", (language,)
        rows, _ = self._read(query + " ORDER BY created_utc, id", args)
        frame = pd.DataFrame(rows, columns=columns)
        for missing in set(VOTE_COLUMNS) - set(columns):
            frame[missing] = None
        frame = frame[list(VOTE_COLUMNS)]
        frame["blind"] = frame["blind"].astype(bool)
        missing = frame["pair_key"].isna()
        if missing.any():
            frame.loc[missing, "pair_key"] = [
                pair_key(*row) for row in frame.loc[missing, ["language", "prompt", "variant_a", "answer_a", "variant_b",
                                                              "answer_b"]].itertuples(index=False)]
        return frame

    def close(self) -> None:
        """Close the store for good, from any thread: wait for the reads and writes under way (a vote being written
        is committed first), fold SQLite's write-ahead log into the file (`wal_checkpoint(TRUNCATE)`) so that the
        file alone holds every vote, and close every thread's connection. Again, it does nothing; afterwards every
        read and write is refused. A PostgreSQL store's connections are just closed."""
        with self.gate:
            if self.closed:
                return
            self.closed = True
            self.gate.wait_for(lambda: self.busy == 0)
            connections, self.connections = self.connections, []
        try:
            if self.kind == "sqlite" and not self.read_only and connections:
                blocked = connections[0].execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if blocked:  # another process is reading: the log stays, and the file is not whole without it
                    print(f"[clo] another process holds the vote store {self.path} open, so its write-ahead log "
                          f"{self.path}-wal was not folded in: keep the two files together", file=sys.stderr, flush=True)
        finally:
            for conn in connections:
                conn.close()


class _Transaction:
    """BEGIN IMMEDIATE (SQLite: take the write lock up front) or a PostgreSQL transaction; commit or roll back."""

    def __init__(self, conn, kind: str):
        self.conn, self.kind = conn, kind

    def __enter__(self):
        if self.kind == "sqlite":
            self.cur = self.conn.cursor()
            self.cur.execute("BEGIN IMMEDIATE")
            return self.cur
        self.tx = self.conn.transaction()
        self.tx.__enter__()
        self.cur = self.conn.cursor()
        return self.cur

    def __exit__(self, kind, value, tb):
        if self.kind == "sqlite":
            self.cur.execute("COMMIT" if kind is None else "ROLLBACK")
            return False
        return self.tx.__exit__(kind, value, tb)


def open_store(url_or_path: str, **kwargs) -> VoteStore:
    """A store from a URL, or from a plain file path (SQLite)."""
    if "://" not in url_or_path:
        url_or_path = f"sqlite:///{url_or_path}"
    where = url_or_path.split("sqlite:///", 1)[1] if url_or_path.startswith("sqlite:///") else _redacted(url_or_path)
    try:
        return VoteStore(url_or_path, **kwargs)
    except sqlite3.OperationalError as e:
        if "readonly" in str(e) or "read-only" in str(e):
            raise CLOError(f"the vote store {where} is read-only ({e}): the app records votes in it, so make it "
                           "writable or choose another --db") from None
        if "unable to open" in str(e):
            raise CLOError(f"cannot open the vote store {where} ({e}): check that it and its folder exist and may be "
                           "written, or choose another --db") from None
        raise CLOError(f"{where} is not a usable vote store ({e}); it was left untouched") from None
    except sqlite3.DatabaseError as e:
        raise CLOError(f"{where} is not a usable vote store ({e}); it was left untouched") from None


def _sqlite_uri(path: Path, query: str) -> str:
    """An SQLite URI for `path` (any characters in it quoted) with `query`, e.g. "mode=ro"."""
    return f"file:{quote(str(Path(path).resolve()))}?{query}"


def _open_read_only(path: Path, **kwargs) -> sqlite3.Connection:
    """A connection that cannot change the file: `mode=ro` and query_only. A WAL-mode file in a folder this process
    may not write (no -shm can be made) is opened `immutable` instead, when it has no -wal file (so nothing is
    waiting to be checkpointed and no writer has it open)."""
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


def _redacted(url: str) -> str:
    """`url` with its password left out: what a message may show of a PostgreSQL URL."""
    try:
        parsed = urlparse(url)
        host = f"{parsed.hostname or ''}" + (f":{parsed.port}" if parsed.port else "")
    except ValueError:  # a malformed port: show no more than the scheme
        return f"{url.split('://', 1)[0]}://…"
    user = f"{parsed.username}@" if parsed.username else ""
    return f"{parsed.scheme}://{user}{host}{parsed.path}"


def _scrub(text: str, url: str) -> str:
    """`text` with the URL's password (and the whole URL) replaced, in case a driver echoes them."""
    try:
        password = urlparse(url).password
    except ValueError:
        password = None
    text = text.replace(url, _redacted(url))
    return text.replace(password, "***") if password else text


# ---- export and hub sync ----

EXPORT_FORMATS = ("csv", "jsonl", "parquet")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula (OWASP, CSV injection)


def spreadsheet_safe(frame):
    """`frame` with every text cell that a spreadsheet would run as a formula (starting with = + - @, a tab or a
    carriage return) prefixed with a single quote, as OWASP advises for CSV files; numbers are left as they are.
    For CSV only: JSONL and Parquet keep the text exact."""
    def safe(value):
        return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value

    from pandas.api.types import is_numeric_dtype

    frame = frame.copy()
    for column in frame.columns:
        if not is_numeric_dtype(frame[column]):  # text, whether pandas holds it as object or str
            frame[column] = frame[column].map(safe)
    return frame


def export_format(path: str | Path, fmt: str | None = None) -> str:
    """The export format: `fmt` when given, else the file's suffix; a `fmt` that contradicts the suffix is refused."""
    suffix = Path(path).suffix.lstrip(".").lower()
    if fmt and suffix in EXPORT_FORMATS and suffix != fmt.lower():
        raise CLOError(f"--format {fmt} contradicts the file name {Path(path).name} (.{suffix}); "
                       f"name the file .{fmt.lower()} or drop --format")
    fmt = (fmt or suffix).lower()
    if fmt not in EXPORT_FORMATS:
        raise CLOError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    return fmt


def export_votes(store: VoteStore, path: str | Path, fmt: str | None = None, language: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write the votes as CSV, JSONL or Parquet (by `fmt` or the file's suffix); written whole or not at all.

    Never over the store itself (its file, -wal, -shm) or any SQLite database, and over another existing file
    only with `overwrite` (clo.files.check_output_file). CSV cells that would run as formulas are quoted
    (`spreadsheet_safe`)."""
    path = Path(path)
    fmt = export_format(path, fmt)
    check_output_file(path, overwrite, protected=[store.path] if store.path else ())
    if path.is_file():
        with open(path, "rb") as fh:
            if fh.read(16) == b"SQLite format 3\x00":
                raise CLOError(f"--out {path} is an SQLite database (a vote store?), which an export never "
                               "writes over: choose another file")
    frame = store.votes(language)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            spreadsheet_safe(frame).to_csv(tmp, index=False, lineterminator="\r\n")  # RFC 4180: a cell with a CR is quoted
        elif fmt == "jsonl":
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path


class HubSync:
    """Mirror the votes to a Hugging Face dataset repo: an append-only JSONL file per replica, committed every
    `every` minutes by huggingface_hub's CommitScheduler. Off unless a repo id and a token are given.

        sync = HubSync.from_settings(repo_id="me/clo-votes", token=os.environ.get("HF_TOKEN"), folder="data/sync")
        sync.append(store.votes())    # new rows only; call after votes, or periodically
    """

    def __init__(self, folder: str | Path, replica: str, scheduler=None):
        self.folder, self.replica, self.scheduler = Path(folder), replica, scheduler
        self.folder.mkdir(parents=True, exist_ok=True)
        self.file = self.folder / f"votes-{replica}.jsonl"
        self.seen: set[str] = set()
        if self.file.exists():
            import json

            self.seen = {json.loads(line)["id"] for line in self.file.read_text(encoding="utf-8").splitlines() if line}

    @classmethod
    def from_settings(cls, repo_id: str | None, token: str | None, folder: str | Path, every_minutes: float = 5,
                      replica: str | None = None) -> "HubSync | None":
        if not repo_id or not token:
            return None
        from huggingface_hub import CommitScheduler

        scheduler = CommitScheduler(repo_id=repo_id, repo_type="dataset", folder_path=folder, every=every_minutes,
                                    token=token, path_in_repo="votes", private=True)
        return cls(folder, replica or uuid.uuid4().hex[:8], scheduler)

    def append(self, votes) -> int:
        """Append the votes not yet in this replica's file; returns how many were added."""
        import contextlib

        fresh = votes[~votes["id"].isin(self.seen)]
        if fresh.empty:
            return 0
        lock = self.scheduler.lock if self.scheduler is not None else contextlib.nullcontext()
        with lock, self.file.open("a", encoding="utf-8") as fh:
            fh.write(fresh.to_json(orient="records", lines=True, force_ascii=False))
        self.seen |= set(fresh["id"])
        return len(fresh)

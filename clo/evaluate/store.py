"""Human pairwise judgments: a durable vote store, on SQLite or PostgreSQL.

    store = open_store("sqlite:///votes.db")                      # or postgresql://user@host/db for many replicas
    battle = store.create_battle(voter="session-1", language="ko", prompt="...", answers={"sft-ko": "...", "clo-ko": "..."})
    reveal = store.vote(battle.id, "a", voter="session-1")        # once per battle -> {"variant_a": ..., ...}
    store.votes()                                                 # a DataFrame for clo.evaluate.ratings
    store.close()

This module holds the connections: one per thread, in the store's dialect, each write one transaction. What a store
does is bound from the modules of each concern: people's battles and votes (clo.evaluate.battles), a judge's votes
(clo.evaluate.judgments), benchmark scores (clo.evaluate.benchmarks), the tables and their migrations (clo.evaluate.schema); exports are
clo.evaluate.export, and the app's mirror of the votes to a dataset repo is clo.evaluate.hub_sync.
A voter is a session from a client address; the store keeps only keyed hashes of both (HMAC with a secret made once
per store and kept in it, or CLO_SECRET), never a raw address, and limits votes per voter and per address (`Limits`).
SQLite runs in WAL mode with synchronous=FULL: a vote that `vote` returned from survives a crash. `store.close()`
(the app calls it when it stops) lets the writes under way finish, folds the log into the file and closes every
thread's connection, so the file alone holds every vote.
A file on a network or FUSE mount (a Space's Storage Bucket at /data, NFS, SMB; `shared_mount`) never runs WAL:
the store opens a live copy on local disk instead (`store.file`, in ~/.cache/clo/votes/; `store.path` stays the
file on the mount) and `store.mirror` (clo.evaluate.snapshot.Snapshots) restores it from the mount at start and
copies it back whole every `snapshot_seconds` (default 30) and at close; a crash loses the votes since the last copy.
`open_store(url, read_only=True)` (the command line's leaderboard and export) changes nothing: SQLite is opened with
`mode=ro` and `query_only` (on a network or FUSE mount, `immutable`: the snapshot as the last copy left it),
PostgreSQL with read-only transactions; no journal mode is set, no schema migrated, no secret made, and a store
from an older schema is read with the columns it has.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import random
import secrets
import sqlite3
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from clo import CLOError
from clo.engines.base import prompt_text
from clo.evaluate import battles, judgments
from clo.evaluate import benchmarks as scores
from clo.evaluate.schema import check_sqlite_file, migrate, open_read_only
from clo.evaluate.snapshot import Snapshots, shared_mount


def keyed_hash(secret: str, raw: str) -> str:
    """A stable pseudonym for a session or an address under `secret`; the raw value is never stored."""
    return hmac.new(secret.encode(), raw.encode(), hashlib.sha256).hexdigest()[:24]


@dataclass
class Limits:
    max_prompt_chars: int = 4000
    battle_ttl_s: float = 3600.0
    votes_per_window: int = 60  # per voter (a session from an address)
    window_s: float = 600.0
    votes_per_address: int = 1200  # per client address, all its sessions together (a room behind one NAT shares it)


class VoteStore:
    """A vote store on SQLite (`sqlite:///path`) or PostgreSQL (`postgresql://...`)."""

    def __init__(self, url: str, limits: Limits | None = None, seed: int | None = None, read_only: bool = False,
                 snapshot_seconds: float = 30.0):
        self.url, self.limits, self.read_only = url, limits or Limits(), read_only
        self.mirror: Snapshots | None = None  # a store on a network or FUSE mount: its live copy and snapshots
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
            check_sqlite_file(self.path, read_only)
            self.file = self.path  # the file SQLite opens: the store itself, or its live copy on local disk
            mount = None if read_only else shared_mount(self.path)  # a read-only open never writes: no copy needed
            if mount:  # WAL is unsafe there: the store lives on local disk, and the mount holds its snapshots
                self.mirror = Snapshots(self.path, mount, snapshot_seconds)
                self.file = self.mirror.local
        elif parsed.scheme in ("postgresql", "postgres"):
            self.kind, self.path, self.file, self.ph = "postgresql", None, None, "%s"
            self.where = _redacted(url)
        else:
            raise CLOError(f"unknown vote store URL {_redacted(url)!r}: use sqlite:///path/votes.db or "
                           "postgresql://user@host/db")
        try:
            self.blank = migrate(self)
            self.secret = os.environ.get("CLO_SECRET") or (None if read_only else self._stored_secret())
            if self.mirror:
                self.mirror.start()
        except BaseException:
            if self.mirror:  # its lock released and its live copy gone: nothing was cast
                self.close()
            raise

    # ---- people's battles and votes (clo.evaluate.battles) ----
    vote_counts = battles.vote_counts
    count = battles.count
    draw_pair = battles.draw_pair
    create_battle = battles.create_battle
    place = battles.place
    prune = battles.prune
    discard = battles.discard
    vote = battles.vote
    votes = battles.votes

    # ---- a judge's votes and unreadable replies (clo.evaluate.judgments) ----
    record_judgment = judgments.record_judgment
    judged_keys = judgments.judged_keys
    record_unreadable = judgments.record_unreadable
    unreadable = judgments.unreadable

    # ---- benchmark scores (clo.evaluate.benchmarks; python -m clo evaluate) ----
    record_benchmark = scores.record_benchmark
    benchmarks = scores.benchmarks
    benchmark_count = scores.benchmark_count

    def pseudonyms(self, voter: str, address: str | None) -> tuple[str, str | None]:
        """(voter key, address key): keyed hashes of the session from its address, and of the address."""
        self._check_writable()
        if address is None:
            return keyed_hash(self.secret, voter), None
        return keyed_hash(self.secret, f"{address}|{voter}"), keyed_hash(self.secret, address)

    def _stored_secret(self) -> str:
        """The store's own secret, made on first use by whichever process gets there first."""
        with self._transaction() as cur:
            cur.execute(self._sql("INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"),
                        ("voter_key", secrets.token_hex(32)))
            cur.execute(self._sql("SELECT value FROM secrets WHERE name = ?"), ("voter_key",))
            return cur.fetchone()[0]

    # ---- the limits: what a prompt may be, how many votes a voter and an address may cast ----
    def _check_prompt(self, prompt: str) -> None:
        if not prompt or not prompt_text(prompt):  # nothing printable (controls, NULs, zero-width characters)
            raise CLOError("empty prompt")
        if len(prompt) > self.limits.max_prompt_chars:
            raise CLOError(f"prompt of {len(prompt)} characters is over the limit of {self.limits.max_prompt_chars}")

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

    # ---- connections ----
    def _connect(self):
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            return conn
        # check_same_thread=False: each thread uses only its own connection, but `close` closes them all from one
        if self.kind == "sqlite" and self.read_only:  # nothing in the file may change, not even its journal mode
            conn = open_read_only(self.file, timeout=60, isolation_level=None, check_same_thread=False)
        elif self.kind == "sqlite":
            conn = sqlite3.connect(self.file, timeout=60, isolation_level=None, check_same_thread=False)
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

    def _insert(self, cur, table: str, row: dict) -> None:
        """INSERT `row` (column -> value) into `table` in the transaction `cur`: every write of a new row goes here."""
        cur.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join([self.ph] * len(row))})",
                    tuple(row.values()))

    def _has_table(self, name: str) -> bool:
        query = ("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?" if self.kind == "sqlite" else
                 "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = current_schema()")
        return bool(self._read(query, (name,))[0][0][0])

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
                    print(f"[clo] another process holds the vote store {self.file} open, so its write-ahead log "
                          f"{self.file}-wal was not folded in: keep the two files together", file=sys.stderr, flush=True)
        finally:
            for conn in connections:
                conn.close()
            if self.mirror:  # a last snapshot of the closed file, then its live copy goes
                self.mirror.close()


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

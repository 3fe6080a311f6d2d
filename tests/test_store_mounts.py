"""Votes stay safe on a network or FUSE mount such as a Space's Storage Bucket at /data (issue 29, part 5).

- the mount under a file is read from /proc/mounts (literal text: FUSE, NFS, SMB, an overlay root, nested and
  stacked mounts, a space written \\040) and from real mounts (tmpfs: local; bindfs, a real FUSE filesystem: shared);
- on such a mount the store lives on local disk in WAL mode and the mount holds snapshots in rollback-journal mode:
  no -wal, -shm or -journal ever appears there; a snapshot at start, every interval and at close, restored at start;
- a SIGKILL between snapshots loses exactly the votes since the last one from the mount (the killed process's live
  copy is set aside with them), and the snapshot is a sound database;
- a local store runs WAL exactly as before.

The real mounts need root (CI runs as root) and, for FUSE, bindfs (.ci/run installs it); without them those cases
skip and say why. The snapshot tests also run on a folder declared FUSE in a copy of /proc/mounts, so they run
everywhere.
"""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from conftest import ROOT, launch_app, make_adapters

from clo import CLOError
from clo.evaluate import snapshot
from clo.evaluate.schema import APPLICATION_ID, MIGRATIONS
from clo.evaluate.snapshot import is_shared_filesystem, mount_of, shared_mount
from clo.evaluate.store import open_store

PROC_MOUNTS = r"""overlay / overlay rw,relatime,lowerdir=/var/lib/docker/l/A:/var/lib/docker/l/B 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0
hf-mount /data fuse.hf-mount rw,nosuid,nodev,relatime,user_id=0,group_id=0 0 0
tmpfs /data/scratch tmpfs rw,relatime 0 0
server:/export /mnt/nfs nfs4 rw,relatime,vers=4.2,rsize=1048576 0 0
//host/share /mnt/smb cifs rw,relatime,vers=3.1.1 0 0
bucket /mnt/my\040bucket fuse.s3fs rw,nosuid,nodev 0 0
/dev/vda /srv ext4 rw,relatime 0 0
me@host: /srv fuse.sshfs rw,nosuid,nodev 0 0
"""


# ---- which mount a file is on ----

@pytest.mark.parametrize("path, expected", [
    ("/data/votes.db", ("/data", "fuse.hf-mount")),
    ("/data", ("/data", "fuse.hf-mount")),                      # the mount point itself
    ("/data/scratch/votes.db", ("/data/scratch", "tmpfs")),     # nested: the longest mount point wins
    ("/data2/votes.db", ("/", "overlay")),                      # /data is a prefix of the text, not a folder above
    ("/mnt/nfs/campaign/votes.db", ("/mnt/nfs", "nfs4")),
    ("/mnt/smb/votes.db", ("/mnt/smb", "cifs")),
    ("/mnt/my bucket/votes.db", ("/mnt/my bucket", "fuse.s3fs")),  # \040 in /proc/mounts is a space
    ("/mnt/my/votes.db", ("/", "overlay")),
    ("/srv/votes.db", ("/srv", "fuse.sshfs")),                  # stacked on /srv: the later line is the one seen
    ("/home/user/votes.db", ("/", "overlay")),
])
def test_the_mount_under_a_path_is_read_from_proc_mounts_text(path, expected):
    assert mount_of(path, PROC_MOUNTS) == expected


def test_no_mount_covers_a_path_outside_every_mount_point():
    assert mount_of("/data/votes.db", "tmpfs /tmp tmpfs rw 0 0\nnot a line\n") is None


@pytest.mark.parametrize("fstype", ["fuse", "fuse.hf-mount", "fuse.s3fs", "fuse.gcsfuse", "fuse.sshfs", "fuseblk",
                                    "nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "glusterfs", "virtiofs"])
def test_network_and_fuse_filesystems_are_shared(fstype):
    assert is_shared_filesystem(fstype)


@pytest.mark.parametrize("fstype", ["tmpfs", "ext4", "overlay", "xfs", "btrfs", "zfs", "proc"])
def test_local_filesystems_are_not_shared(fstype):
    assert not is_shared_filesystem(fstype)


# ---- real mounts ----

def _mount(args: list[str], what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"mounting {what} needs root (CI runs as root)")
    try:
        done = subprocess.run(args, capture_output=True, text=True)
    except OSError as e:  # no mount command at all
        pytest.skip(f"{what} cannot be mounted here: {e}")
    if done.returncode:
        pytest.skip(f"{what} cannot be mounted here: {done.stderr.strip() or done.returncode}")


def _unmount(point: Path) -> None:
    if subprocess.run(["umount", str(point)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)  # still busy: detach it anyway


@pytest.fixture
def fuse_dir(tmp_path):
    """A real FUSE mount (bindfs of a folder), its name with a space; skipped, saying why, where none can be made."""
    if not shutil.which("bindfs"):
        pytest.skip("bindfs is not installed (.ci/run installs it as root: apt-get install bindfs)")
    if not Path("/dev/fuse").exists():
        pytest.skip("no /dev/fuse on this machine")
    backing, point = tmp_path / "backing", tmp_path / "bucket mount"
    backing.mkdir()
    point.mkdir()
    _mount(["bindfs", str(backing), str(point)], "a FUSE filesystem (bindfs)")
    yield point
    _unmount(point)


@pytest.fixture
def tmpfs_dir(tmp_path):
    point = tmp_path / "local disk"
    point.mkdir()
    _mount(["mount", "-t", "tmpfs", "none", str(point)], "tmpfs")
    yield point
    _unmount(point)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Live copies go under the test's folder, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "clo" / "votes"


@pytest.fixture(params=["bindfs", "declared"])
def bucket(request, tmp_path, monkeypatch):
    """(folder on a shared mount, the mount table to read or "" for the real one): a real FUSE mount, or a folder
    declared FUSE in a copy of /proc/mounts, so the snapshot tests run where nothing can be mounted too."""
    if request.param == "bindfs":
        yield request.getfixturevalue("fuse_dir"), ""
        return
    folder = tmp_path / "declared bucket"
    folder.mkdir()
    table = tmp_path / "mounts"
    table.write_text(Path("/proc/mounts").read_text() + f"bucket {str(folder).replace(' ', chr(92) + '040')} "
                     "fuse.declared rw,nosuid,nodev 0 0\n")
    monkeypatch.setattr(snapshot, "MOUNTS", str(table))
    yield folder, str(table)


def test_a_real_fuse_mount_is_shared_and_a_real_tmpfs_is_local(fuse_dir, tmpfs_dir):
    assert shared_mount(fuse_dir / "votes.db") == (str(fuse_dir), "fuse")  # its name read back from \040
    assert shared_mount(tmpfs_dir / "votes.db") is None
    assert mount_of(str(tmpfs_dir / "votes.db"), Path("/proc/mounts").read_text()) == (str(tmpfs_dir), "tmpfs")


def test_a_store_on_a_real_tmpfs_runs_wal_in_place(tmpfs_dir):
    store = open_store(str(tmpfs_dir / "votes.db"))
    cast(store, 2)
    assert store.mirror is None and store.file == tmpfs_dir / "votes.db"
    assert (tmpfs_dir / "votes.db-wal").exists()
    store.close()


# ---- a store on a shared mount ----

def cast(store, n: int, tag: str = "p") -> list[str]:
    """`n` battles voted on; their ids."""
    ids = []
    for i in range(n):
        b = store.create_battle(voter="v", language="ko", prompt=f"{tag} {i}", answers={"sft-ko": "1", "clo-ko": "2"})
        store.vote(b.id, "a", voter="v")
        ids.append(b.id)
    return ids


def snapshot_of(path: Path) -> tuple[set[str], str, bytes]:
    """(battle ids voted on, integrity_check, header bytes 18-19) of a snapshot, read immutable: nothing written."""
    with closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as conn:
        ids = {r[0] for r in conn.execute("SELECT battle_id FROM votes")}
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return ids, integrity, path.read_bytes()[18:20]


def sqlite_litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(("-wal", "-shm", "-journal")))


def test_votes_on_a_mount_live_on_local_disk_and_round_trip_through_snapshots(bucket, cache, capfd):
    folder, _ = bucket
    db = folder / "votes.db"
    store = open_store(str(db))
    assert store.mirror and store.file.parent == cache and store.path == db
    assert store.file.with_name(store.file.name + "-wal").exists()  # the live copy runs WAL, on local disk
    first = cast(store, 3)
    assert sqlite_litter(folder) == []
    assert snapshot_of(db)[0] == set()  # the snapshot made at start; the timer (30 s) has not run yet
    store.close()
    ids, integrity, mode = snapshot_of(db)
    assert ids == set(first) and integrity == "ok" and mode == b"\x01\x01"  # rollback-journal mode, never WAL
    assert sqlite_litter(folder) == [] and not store.file.exists()  # a clean close leaves the mount alone
    err = capfd.readouterr().err
    assert f"{folder} is a FUSE mount" in err and f"copied to {db} every 30 s and at shutdown" in err

    store = open_store(str(db))
    assert "(restored from it now)" in capfd.readouterr().err
    assert set(store.votes().battle_id) == set(first)
    second = cast(store, 2, "again")
    reader = open_store(str(db), read_only=True)  # the leaderboard and export commands: the snapshot as it is
    assert set(reader.votes().battle_id) == set(first)
    assert store.mirror.snapshot() and not store.mirror.snapshot()  # a second with nothing new writes nothing
    assert set(open_store(str(db), read_only=True).votes().battle_id) == set(first + second)
    store.close()
    assert sqlite_litter(folder) == []
    assert set(open_store(str(db), read_only=True).votes().battle_id) == set(first + second)


def test_votes_reach_the_mount_every_interval(bucket):
    folder, _ = bucket
    store = open_store(str(folder / "votes.db"), snapshot_seconds=0.2)
    try:
        voted = set(cast(store, 2))
        deadline = time.monotonic() + 20
        while snapshot_of(folder / "votes.db")[0] != voted and time.monotonic() < deadline:
            time.sleep(0.1)
        assert snapshot_of(folder / "votes.db")[0] == voted
    finally:
        store.close()



def test_a_snapshot_that_fails_half_written_leaves_the_last_good_one(bucket, monkeypatch):
    folder, _ = bucket
    store = open_store(str(folder / "votes.db"))
    first = set(cast(store, 2))
    store.mirror.snapshot()
    cast(store, 2, "lost")

    def half_then_full(source, target):  # the mount fills up halfway through the copy
        Path(target).write_bytes(Path(source).read_bytes()[:4096])
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch, pytest.raises(
            CLOError, match=f"cannot write the snapshot {folder / 'votes.db'} .*No space left on device.*only in "
                            f"{store.file}"):
        patch.setattr(snapshot.shutil, "copyfile", half_then_full)
        store.mirror.snapshot()
    ids, integrity, _ = snapshot_of(folder / "votes.db")
    assert ids == first and integrity == "ok"
    assert sorted(p.name for p in folder.iterdir()) == ["votes.db"]  # the half-written temporary file is gone
    store.close()


KILLED = r"""
import sys, time
import clo.evaluate.snapshot as snapshot
if sys.argv[2]:
    snapshot.MOUNTS = sys.argv[2]
from clo.evaluate.store import open_store
store = open_store(sys.argv[1], snapshot_seconds=3600)
def cast(n, tag):
    for i in range(n):
        b = store.create_battle(voter="k", language="ko", prompt=f"{tag} {i}", answers={"x": "1", "y": "2"})
        store.vote(b.id, "a", voter="k")
        print(b.id, flush=True)
cast(5, "before")
store.mirror.snapshot(force=True)
print("SNAPSHOT", flush=True)
cast(5, "after")
print("DONE", flush=True)
time.sleep(600)
"""


def test_sigkill_between_snapshots_loses_exactly_the_votes_since_the_last_one(bucket, cache, capfd):
    folder, table = bucket
    db = folder / "votes.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(db), table], stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not lines or lines[-1] != "DONE":
            line = proc.stdout.readline()
            assert line, "the writer died before its votes were cast"
            lines.append(line.strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    cut = lines.index("SNAPSHOT")
    before, after = set(lines[:cut]), set(lines[cut + 1:-1])
    assert len(before) == len(after) == 5
    ids, integrity, mode = snapshot_of(db)
    assert ids == before and integrity == "ok" and mode == b"\x01\x01"
    assert sqlite_litter(folder) == []

    store = open_store(str(db))
    assert set(store.votes().battle_id) == before  # exactly the votes up to the last snapshot
    cast(store, 1, "after the crash")  # and it goes on
    store.close()
    assert len(snapshot_of(db)[0]) == 6
    aside = list(cache.glob("*.unsaved-*.db"))  # the killed process's live copy, its later votes with it
    assert len(aside) == 1
    with closing(sqlite3.connect(aside[0])) as conn:
        assert {r[0] for r in conn.execute("SELECT battle_id FROM votes")} == before | after
    assert f"kept as {aside[0]}" in capfd.readouterr().err


def test_one_process_writes_a_store_on_a_mount(bucket):
    folder, _ = bucket
    store = open_store(str(folder / "votes.db"))
    with pytest.raises(CLOError, match="another process on this machine has the vote store .*votes.db open"):
        open_store(str(folder / "votes.db"))
    store.close()
    open_store(str(folder / "votes.db")).close()


def test_a_wal_store_an_older_clo_left_on_a_mount_is_rewritten_in_rollback_mode(bucket, tmp_path):
    folder, _ = bucket
    old = open_store(str(tmp_path / "old.db"))  # local disk: WAL, as every store was before
    voted = set(cast(old, 2))
    old.close()
    assert (tmp_path / "old.db").read_bytes()[18:20] == b"\x02\x02"
    shutil.copyfile(tmp_path / "old.db", folder / "votes.db")
    store = open_store(str(folder / "votes.db"))
    assert snapshot_of(folder / "votes.db")[2] == b"\x01\x01"
    assert set(store.votes().battle_id) == voted
    store.close()
    assert sqlite_litter(folder) == []

    (folder / "votes.db-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(28))  # its log, left by a killed process
    with pytest.raises(CLOError, match="write-ahead log .*votes.db-wal beside it on a network or FUSE mount"):
        open_store(str(folder / "votes.db"), read_only=True)



def test_an_older_schema_on_a_mount_is_migrated_with_its_backup_beside_it_in_rollback_mode(bucket, tmp_path, capfd):
    folder, _ = bucket
    old = tmp_path / "old.db"
    with closing(sqlite3.connect(old, isolation_level=None)) as conn:  # the previous schema, WAL as an older clo ran it
        conn.execute("PRAGMA journal_mode=WAL")
        for migration in MIGRATIONS[:-1]:
            conn.executescript(migration)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS) - 1,))
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    shutil.copyfile(old, folder / "votes.db")
    store = open_store(str(folder / "votes.db"))
    voted = set(cast(store, 1))
    store.close()
    backup = folder / f"votes.db.bak-v{len(MIGRATIONS) - 1}"
    assert f"backup at {backup}" in capfd.readouterr().err
    assert backup.read_bytes()[18:20] == b"\x01\x01" and snapshot_of(folder / "votes.db")[1:] == ("ok", b"\x01\x01")
    assert snapshot_of(folder / "votes.db")[0] == voted
    with closing(sqlite3.connect(f"file:{backup}?immutable=1", uri=True)) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == len(MIGRATIONS) - 1
    with closing(sqlite3.connect(f"file:{folder / 'votes.db'}?immutable=1", uri=True)) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    assert sqlite_litter(folder) == []



@pytest.mark.slow
def test_the_app_with_its_store_on_a_real_fuse_mount_copies_its_votes_there_at_shutdown(tiny_model, fuse_dir, tmp_path):
    from gradio_client import Client

    make_adapters(tiny_model, tmp_path / "adapters")
    db = fuse_dir / "votes.db"  # as a Space's /data/votes.db on its bucket
    proc, url = launch_app(tiny_model, tmp_path, CLO_DB=str(db), CLO_SNAPSHOT_SECONDS="3600", CLO_MAX_TOKENS="8",
                           XDG_CACHE_HOME=str(tmp_path / "cache"))
    try:
        client = Client(url, verbose=False)
        battle = client.predict("", "ko", api_name="/battle")
        reveal = client.predict(battle["battle_id"], "a", api_name="/vote")
        assert sqlite_litter(fuse_dir) == []
        proc.send_signal(signal.SIGTERM)  # what a Space's restart sends
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "app.log").read_text()
    assert code == 0 and "Traceback" not in log, log[-2000:]
    assert f"{fuse_dir} is a FUSE mount (fuse): SQLite's WAL is unsafe there" in log
    assert f"copied to {db} every 3600 s and at shutdown" in log
    ids, integrity, mode = snapshot_of(db)  # the interval never came: the copy at shutdown holds the vote
    assert ids == {reveal["battle_id"]} and integrity == "ok" and mode == b"\x01\x01"
    assert sqlite_litter(fuse_dir) == []


def test_a_store_on_local_disk_runs_wal_in_place_as_before(tmp_path):
    store = open_store(str(tmp_path / "votes.db"))
    cast(store, 1)
    assert store.mirror is None and store.file == tmp_path / "votes.db"
    assert store._connect().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "votes.db-wal").exists()
    store.close()

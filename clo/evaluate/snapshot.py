"""A vote store on a network or FUSE mount (a Space's Storage Bucket at /data, NFS, SMB): never SQLite's WAL there.

    shared_mount("/data/votes.db")         # ("/data", "fuse.hf-mount") on such a mount, else None (local disk)
    mirror = Snapshots(Path("/data/votes.db"), ("/data", "fuse"), every_s=30)   # what clo.evaluate.store does there
    mirror.local                           # ~/.cache/clo/votes/<hash>.db: the live store, WAL on local disk
    mirror.start(); mirror.snapshot(force=True); mirror.close()

WAL needs shared memory (the -shm file, mapped) and POSIX locks that network and FUSE filesystems do not give, and
bucket-style mounts are known to corrupt SQLite files. So a writable store on such a mount lives on local disk, in
`$XDG_CACHE_HOME/clo/votes/` (default `~/.cache/clo/votes/`; on a Space, the container's own disk), as
`<first 16 hex of sha256(the mount path)>.db` in WAL mode, and the file on the mount is a snapshot of it: a
consistent copy made with SQLite's backup API into a local temporary file switched to journal_mode=DELETE, then
copied whole to a temporary name on the mount and renamed over the snapshot (clo.files.atomic_path), so a reader
sees the old snapshot or the new one, never half of one, and the mount only ever sees one file written start to
end. A snapshot is taken at start (proving the mount writable), every `every_s` seconds when a vote or anything
else changed, and at close (or at exit, when a process forgets close). At start the live copy is restored from the
snapshot when there is one. A crash or SIGKILL loses the votes since the last snapshot from the mount; a live copy
found at start was left by such a process and is set aside, with its votes, as `<hash>.unsaved-<UTC time>.db`,
never restored over the snapshot. A clean close removes the live copy. One process on one machine writes a given
snapshot (a lock beside the live copy refuses a second); replicas want PostgreSQL. A WAL-flagged file that an older
clo left on the mount is restored and at once written back in rollback-journal mode, before a migration's backup
(`<file>.bak-v<old>`, clo.evaluate.schema) is copied from it beside it; one with a non-empty -wal is refused.

Reading such a store (the leaderboard and export commands) opens the snapshot `immutable` (`open_snapshot`): no
lock, no journal, nothing written on the mount; that is sound because a snapshot is only ever replaced whole by a
rename, never changed in place. Mounts are read from /proc/mounts; where it is missing (not Linux) none is seen.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
from contextlib import closing
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from clo import CLOError
from clo.files import atomic_path

MOUNTS = "/proc/mounts"
# Filesystems whose files other machines or a user-space daemon serve: WAL's shared memory and locks are unsafe there
SHARED_FILESYSTEMS = {"fuse", "fuseblk", "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph",
                      "glusterfs", "lustre", "gpfs", "beegfs", "afs", "ocfs2", "gfs2", "s3fs", "gcsfuse", "davfs"}


def is_shared_filesystem(fstype: str) -> bool:
    """Whether a filesystem type of /proc/mounts is a network or FUSE one (fuse.s3fs, nfs4, cifs...); tmpfs, ext4,
    overlay, xfs and btrfs are local."""
    return fstype in SHARED_FILESYSTEMS or fstype.startswith("fuse.")


def _unescape(field: str) -> str:
    """A /proc/mounts field as the path it names: the kernel writes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: str, mounts_text: str) -> tuple[str, str] | None:
    """(mount point, filesystem type) of the mount holding the absolute, resolved `path`: the longest mount point in
    `mounts_text` (the text of /proc/mounts) that is `path` or a folder above it; a later line wins over an earlier
    one at the same point (a mount stacked on another). None if no line covers it."""
    target, best = PurePosixPath(path), None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = PurePosixPath(_unescape(fields[1]))
        if (point == target or point in target.parents) and (best is None or len(point.parts) >= len(best[0].parts)):
            best = (point, fields[2])
    return (str(best[0]), best[1]) if best else None


def shared_mount(path: str | Path) -> tuple[str, str] | None:
    """(mount point, type) when the file `path` (which may not exist yet) is on a network or FUSE mount, else None."""
    try:
        with open(MOUNTS, encoding="utf-8", errors="surrogateescape") as fh:
            text = fh.read()
    except OSError:  # not Linux: no mount table to read, so nothing is known to be shared
        return None
    found = mount_of(str(Path(path).resolve()), text)
    return found if found and is_shared_filesystem(found[1]) else None


def describe(mount: tuple[str, str]) -> str:
    point, fstype = mount
    return f"{point} is a {'FUSE' if fstype.startswith('fuse') else 'network'} mount ({fstype})"


def open_snapshot(path: Path, **kwargs) -> sqlite3.Connection:
    """A read-only connection to a store file on a shared mount, opened `immutable`: no lock, journal or -shm on the
    mount. A non-empty -wal beside it means an older clo ran WAL there, whose votes immutable would not see: refused."""
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size:
        raise CLOError(f"the vote store {path} has a write-ahead log {wal} beside it on a network or FUSE mount (an "
                       "older clo ran WAL there): copy both files to a local disk and open the copy with --db")
    conn = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?immutable=1", uri=True, **kwargs)
    conn.execute("PRAGMA query_only=ON")
    return conn


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clo" / "votes"


class Snapshots:
    """The live copy of the store at `remote` (on `mount`) on local disk, and its snapshots on the mount."""

    def __init__(self, remote: Path, mount: tuple[str, str], every_s: float):
        if not every_s > 0:
            raise CLOError(f"the snapshot interval of the vote store {remote} must be above 0 s, got {every_s}")
        self.remote, self.mount, self.every_s = Path(remote).resolve(), mount, every_s
        folder = cache_folder()
        if shared_mount(folder):  # the live copy must be where WAL is safe
            raise CLOError(f"the vote store {remote} is on a network or FUSE mount, and so is {folder}, where its "
                           "live copy would be kept: set XDG_CACHE_HOME to a folder on a local disk")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CLOError(f"cannot create {folder} for the live copy of the vote store {remote} ({e.strerror}): "
                           "set XDG_CACHE_HOME to a writable folder on a local disk") from None
        key = hashlib.sha256(str(self.remote).encode()).hexdigest()[:16]
        self.local = folder / f"{key}.db"
        self.source: sqlite3.Connection | None = None  # the snapshots' own connection to the live copy
        self.version = None  # PRAGMA data_version at the last snapshot: unchanged means nothing to copy
        self.guard = threading.Lock()  # one snapshot at a time (the timer's thread, a forced one, close)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.closed = False
        self.lock = self._claim(folder / f"{key}.lock")
        try:
            self._set_aside_leftover()
            restored = self._restore()
        except BaseException:
            self.lock.close()
            raise
        print(f"[clo] {describe(mount)}: SQLite's WAL is unsafe there; votes live in {self.local} and are copied to "
              f"{self.remote} every {every_s:g} s and at shutdown{' (restored from it now)' if restored else ''}",
              file=sys.stderr, flush=True)

    def _claim(self, path: Path):
        """An exclusive lock held while this store is open: a second process would restore over the live copy."""
        import fcntl  # POSIX only, like the /proc/mounts that brought us here

        fh = open(path, "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise CLOError(f"another process on this machine has the vote store {self.remote} open (its live copy "
                           f"{self.local}): one process writes a store on a network or FUSE mount; stop it, or "
                           "use PostgreSQL for several") from None
        return fh

    def _set_aside_leftover(self) -> None:
        """A live copy at start was left by a process that never closed (killed): its votes since its last snapshot
        are only there, so keep it under a name of its own and say so, rather than restore over it."""
        if not self.local.exists():
            return
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside, n = self.local.with_name(f"{self.local.stem}.unsaved-{stamp}.db"), 0
        while aside.exists():  # never over an earlier one
            n += 1
            aside = self.local.with_name(f"{self.local.stem}.unsaved-{stamp}.{n}.db")
        try:
            with closing(sqlite3.connect(self.local)) as conn:  # fold its -wal in: the file alone holds its votes
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            os.replace(self.local, aside)
        except (OSError, sqlite3.Error) as e:
            raise CLOError(f"cannot set aside {self.local}, the live copy a stopped process left of the vote store "
                           f"{self.remote} ({getattr(e, 'strerror', None) or e}): move it away by hand") from None
        for suffix in ("-wal", "-shm"):
            Path(f"{self.local}{suffix}").unlink(missing_ok=True)
        print(f"[clo] {self.local} was left by a process that stopped without its last snapshot (killed?): kept as "
              f"{aside} with the votes it cast since; the store goes on from the snapshot {self.remote}",
              file=sys.stderr, flush=True)

    def _restore(self) -> bool:
        """The live copy made from the snapshot on the mount, when there is one (clo.evaluate.schema has checked it).
        A WAL-flagged one (an older clo ran WAL there) is written back at once in rollback-journal mode, before
        anything opens it in place (a migration's backup beside it)."""
        if not self.remote.exists() or self.remote.stat().st_size == 0:
            return False
        try:
            with closing(open_snapshot(self.remote)) as src, atomic_path(self.local) as tmp:
                with closing(sqlite3.connect(tmp)) as dst:
                    src.backup(dst)
            with open(self.remote, "rb") as fh:
                wal_flagged = fh.read(20)[18] == 2  # header bytes 18-19: 2 in WAL mode, 1 in rollback-journal mode
            if wal_flagged:
                with closing(sqlite3.connect(self.local)) as live:
                    self._write(live)
        except (OSError, sqlite3.Error) as e:
            raise CLOError(f"cannot restore the vote store {self.remote} to its live copy {self.local} "
                           f"({getattr(e, 'strerror', None) or e}): check the mount and the local disk") from None
        return True

    def start(self) -> None:
        """The first snapshot now (the mount proven writable, and a reader finds the store), then the timer."""
        self.source = sqlite3.connect(self.local, timeout=60, check_same_thread=False)
        try:
            with self.guard:
                self.version = self._write(self.source)
        except (OSError, sqlite3.Error) as e:
            self.source.close()
            self.source = None  # nothing was cast: close removes the live copy
            raise CLOError(f"cannot write the vote store {self.remote} on its mount "
                           f"({getattr(e, 'strerror', None) or e}): make it writable or choose another --db") from None
        self.thread = threading.Thread(target=self._every, name="clo-vote-snapshots", daemon=True)
        self.thread.start()
        atexit.register(self.close)  # a process that never calls store.close() still leaves its votes on the mount

    def _every(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                self.snapshot()
            except CLOError as e:  # the mount may come back: say so and try again at the next tick
                print(f"[clo] {e}", file=sys.stderr, flush=True)

    def snapshot(self, force: bool = False) -> bool:
        """Copy the live store to the mount, unless nothing was committed since the last copy (and not `force`).
        Returns whether a snapshot was written."""
        with self.guard:
            if not force and self.source.execute("PRAGMA data_version").fetchone()[0] == self.version:
                return False
            try:
                self.version = self._write(self.source)
            except (OSError, sqlite3.Error) as e:
                raise CLOError(f"cannot write the snapshot {self.remote} of the vote store "
                               f"({getattr(e, 'strerror', None) or e}): the votes since the last one are only in "
                               f"{self.local}") from None
            return True

    def _write(self, source: sqlite3.Connection) -> int:
        """One snapshot of the live copy through `source`; returns its data_version read before the copy (a commit
        during the copy changes it, so that commit is copied next time too)."""
        version = source.execute("PRAGMA data_version").fetchone()[0]
        # a local copy first, then whole to the mount: a bucket mount sees one file written start to end, no journal
        with tempfile.TemporaryDirectory(prefix=".snapshot-", dir=self.local.parent) as tmp:
            copy = Path(tmp) / self.remote.name
            with closing(sqlite3.connect(copy)) as dst:
                source.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")  # the backup copied the live file's WAL flag
            with atomic_path(self.remote) as target:
                shutil.copyfile(copy, target)
        return version

    def close(self) -> None:
        """The timer stopped, a last snapshot, and the live copy removed once the mount holds it all (kept, and
        said, when the snapshot fails: the next start sets it aside). Again, it does nothing."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        self.stop.set()
        if self.thread:
            self.thread.join()
        try:
            if self.source is not None:
                try:
                    self.snapshot()
                except CLOError as e:
                    print(f"[clo] {e}; it is set aside at the next start", file=sys.stderr, flush=True)
                    return  # the live copy stays, with the votes the mount lacks
                finally:
                    self.source.close()
            # the mount holds every vote (or the store never started, so none was cast): the live copy goes
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.local}{suffix}").unlink(missing_ok=True)
        finally:
            self.lock.close()  # releases the flock

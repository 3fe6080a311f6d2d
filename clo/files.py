"""One way to write state: `atomic_write` puts a whole file in place or leaves the old one untouched.

    atomic_write("adapters/lineup.json", json.dumps(choice))      # text (UTF-8) or bytes

The new content goes to a fresh temporary file in the target's own folder (a unique name, so two writers never
share one), is flushed and fsynced, then renamed over the target with `os.replace`, which is atomic on POSIX:
a reader sees the old file or the new one, never half of one, and a crash leaves no partial target.

Whole folders (an adapter) are built in a hidden `staging` folder beside their destination, marked with the pid and
start time of the process that made it, and renamed into place when complete:

    with staging("adapters", "clo-ko") as tmp:        # adapters/.tmp-clo-ko-XXXXXXXX/, removed on leaving
        write_everything(tmp / "clo-ko"); (tmp / "clo-ko").rename("adapters/clo-ko")
    remove_stale("adapters")                           # at the next start: what killed runs left behind
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (pandas, pyarrow); on success it
    replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, content: str | bytes) -> Path:
    """Write `content` to `path` whole or not at all; returns the path."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


OWNER = ".clo-owner.json"  # in a staging folder: {"pid", "started"} of the process that made it
STAGING_PREFIXES = (".tmp-", ".old-")  # .tmp-<name>-*: a folder being built; .old-<name>-*: one moved aside
UNMARKED_GRACE_S = 3600  # an unmarked staging folder (older code, or caught between mkdtemp and its mark) this old is stale


def staging_folder(parent: str | Path, name: str, kind: str = "tmp") -> Path:
    """A new hidden folder `.{kind}-{name}-XXXXXXXX` in `parent` (a name of its own), marked with this process's pid
    and start time so that `remove_stale` can tell later whether the process that made it is gone."""
    import psutil

    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{kind}-{name}-", dir=parent))
    try:
        atomic_write(folder / OWNER, json.dumps({"pid": os.getpid(), "started": psutil.Process().create_time()}))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


@contextmanager
def staging(parent: str | Path, name: str, kind: str = "tmp") -> Iterator[Path]:
    """`staging_folder(parent, name, kind)`, removed with whatever is still in it on leaving (success or error)."""
    folder = staging_folder(parent, name, kind)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _maker_alive(folder: Path) -> bool:
    """Whether the process that made staging `folder` still runs (an unmarked folder: whether it is recent)."""
    import psutil

    try:
        owner = json.loads((folder / OWNER).read_text(encoding="utf-8"))
        pid, started = int(owner["pid"]), float(owner["started"])
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime < UNMARKED_GRACE_S
        except OSError:
            return True  # gone meanwhile: nothing to remove
    except (OSError, ValueError, KeyError, TypeError):
        return False  # a mark nobody could have written whole (atomic_write): not a live process's
    try:
        return abs(psutil.Process(pid).create_time() - started) < 0.01  # the same process, not one that reused the pid
    except (psutil.Error, ValueError, OverflowError):
        return False


def remove_stale(parent: str | Path) -> list[Path]:
    """Remove the staging folders under `parent` whose process is gone (killed mid-save); returns those removed.

    A folder moved aside (`.old-<name>-*`) whose replacement never arrived (no `<name>` beside it) is put back
    instead, so a run killed between the two renames loses nothing. Folders of live processes are left alone.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    removed = []
    for folder in sorted(parent.iterdir()):
        if not folder.name.startswith(STAGING_PREFIXES) or folder.is_symlink() or not folder.is_dir():
            continue
        if _maker_alive(folder):
            continue
        if folder.name.startswith(".old-"):
            name = folder.name.removeprefix(".old-").rpartition("-")[0]
            marked = (folder / OWNER).exists()  # staging() keeps the old folder inside; older code renamed it whole
            kept = folder / name if marked else folder
            if name and kept.is_dir() and not (parent / name).exists():
                with suppress(OSError):  # another start put it back first
                    kept.rename(parent / name)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed

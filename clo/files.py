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

The one rule for every command that writes output: it writes only into a folder it created (`new_folder`), into
a folder carrying its own marker that holds nothing it did not write (`foreign_entries` lists anything else, and
the command refuses), or over a file the user named with an explicit `--overwrite` (`check_output_file`); never
over a protected file (the vote store), and it removes only what it can prove it made (`remove_stale` takes only
marked staging folders whose maker is gone).

Reading a user's text file (a recipe, a data file) goes through one decoder, `read_text`: UTF-8 with or without a
byte-order mark, UTF-16/32 with one, and one sentence naming the file for anything else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from clo import CLOError


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


def named(paths, limit: int = 8) -> str:
    """`paths` (strings) as a short list for a message: "a, b, c and 4 more"."""
    paths = list(paths)
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def check_output_file(path: str | Path, overwrite: bool = False, protected=(), what: str = "--out") -> Path:
    """Refuse to write file `path` where it is not ours to write: a folder, one of the `protected` files (the vote
    store and its -wal/-shm/-journal: even with `overwrite`), or an existing file without `overwrite`."""
    path = Path(path)
    for guarded in map(Path, protected):
        for suffix in ("", "-wal", "-shm", "-journal"):
            sibling = Path(f"{guarded}{suffix}")
            same = path.resolve() == sibling.resolve()
            with suppress(OSError):
                same = same or os.path.samefile(path, sibling)  # a hard link or another spelling of it
            if same:
                raise CLOError(f"{what} {path} is {'the vote store' if not suffix else f'the {suffix} file of'} "
                               f"{guarded}, which is never written over: choose another file")
    if path.is_dir():
        raise CLOError(f"{what} {path} is a folder; give a file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise CLOError(f"{what} {path} already exists; pass --overwrite to replace it, or choose another file")
    return path


def new_folder(parent: str | Path, name: str) -> Path:
    """A folder made now by this process: `parent/name`, or `name-2`, `name-3`, ... when that is taken (two runs
    started in the same second never share one)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = parent / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise CLOError(f"{parent} already holds {name} and 998 folders named after it; choose another folder")


def foreign_entries(folder: str | Path, ours: set[str], marker: str) -> list[str]:
    """What `folder` holds that its command did not write: entries (relative POSIX paths; a folder as `name/`,
    whole when nothing of ours is in it) that are neither `marker` nor a file in `ours` nor a folder on the way to
    one. Links are never followed."""
    folder = Path(folder)
    ours = set(ours) | {marker}
    above = {p.as_posix() for f in ours for p in Path(f).parents if str(p) != "."}  # folders on the way to ours
    found: list[str] = []

    def walk(here: Path) -> None:
        for entry in sorted(here.iterdir()):
            rel = entry.relative_to(folder).as_posix()
            if entry.is_dir() and not entry.is_symlink():
                if rel in above:
                    walk(entry)
                else:
                    found.append(rel + "/")
            elif rel not in ours or entry.is_symlink():
                found.append(rel)

    walk(folder)
    return found


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


def _ours_and_dead(folder: Path) -> bool:
    """Whether staging `folder` carries a whole mark (pid and start time, written by `staging_folder`) of a process
    that no longer runs. An unmarked or garbled folder proves nothing: it may be the user's, and is never ours."""
    import psutil

    try:
        owner = json.loads((folder / OWNER).read_text(encoding="utf-8"))
        pid, started = int(owner["pid"]), float(owner["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    try:
        return abs(psutil.Process(pid).create_time() - started) >= 0.01  # another process that reused the pid
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, ValueError, OverflowError):
        return False


def remove_stale(parent: str | Path) -> list[Path]:
    """Remove the staging folders under `parent` whose process is gone (killed mid-save); returns those removed.

    Only folders marked by `staging_folder` are taken: a `.tmp-*` / `.old-*` folder without a whole mark is the
    user's (or unprovable) and is left alone, however old. A folder moved aside (`.old-<name>-*`) whose
    replacement never arrived (no `<name>` beside it) is put back instead, so a run killed between the two renames
    loses nothing. Folders of live processes are left alone.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    removed = []
    for folder in sorted(parent.iterdir()):
        if not folder.name.startswith(STAGING_PREFIXES) or folder.is_symlink() or not folder.is_dir():
            continue
        if not _ours_and_dead(folder):
            continue
        if folder.name.startswith(".old-"):
            name = folder.name.removeprefix(".old-").rpartition("-")[0]
            kept = folder / name  # staging() keeps the old folder inside its marked one
            if name and kept.is_dir() and not (parent / name).exists():
                with suppress(OSError):  # another start put it back first
                    kept.rename(parent / name)
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


def read_text(path: Path, what: str = "file") -> str:
    """The text of a file a user wrote (a data file, a recipe): UTF-8 (a byte-order mark, as Excel and Windows editors
    write, is dropped) or UTF-16/32 with a byte-order mark; anything else is one sentence naming the file, and the
    line of a bad byte. `what` names the kind of file when it cannot be read at all ("data file", "recipe file")."""
    import codecs

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CLOError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16: FF FE 00 00 starts both
        encoding = "utf-32"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif b"\0" in data:
        raise CLOError(f"{path} is not text (it has NUL bytes): binary, or UTF-16/32 without a byte-order mark; "
                       "save it as UTF-8")
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].decode(encoding, errors="replace").count("\n") + 1
        name, hint = ("UTF-8", ", perhaps Latin-1 or Windows-1252") if encoding == "utf-8-sig" else (encoding.upper(), "")
        raise CLOError(f"{path}, line {line}: not {name} text (byte 0x{data[e.start]:02x}){hint}; save it as UTF-8") from None


def same_files(a: Path, b: Path) -> bool:
    """Whether folder `b` holds exactly the files of `a` with the same bytes (adapters are a few MB)."""
    if not b.is_dir():
        return False
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files)


def copy_whole(src: Path, dest: Path) -> None:
    """Copy the folder `src` to `dest` through a marked staging folder (a killed run's copy is removed at the next
    start), replacing `dest` whole; fresh file times. An existing `dest` is replaced only when it is a model or an
    adapter folder (an older copy); anything else there is refused, untouched."""
    if dest.exists() and not any((dest / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise CLOError(f"{dest} exists and is not a model or adapter folder, so it is not replaced; move it away")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with staging(dest.parent, dest.name) as stage:
        shutil.copytree(src, stage / dest.name, copy_function=shutil.copyfile)
        if dest.exists():
            shutil.rmtree(dest)
        (stage / dest.name).rename(dest)

"""One way to write state: `atomic_write` puts a whole file in place or leaves the old one untouched.

    atomic_write("adapters/lineup.json", json.dumps(choice))      # text (UTF-8) or bytes

The new content goes to a fresh temporary file in the target's own folder (a unique name, so two writers never
share one), is flushed and fsynced, then renamed over the target with `os.replace`, which is atomic on POSIX:
a reader sees the old file or the new one, never half of one, and a crash leaves no partial target.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
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

"""Where a model or dataset comes from: a local folder, the local hub cache, or the Hugging Face hub.

Hub libraries retry for most of a minute before failing when the network is down. This module asks
once, with a short timeout, whether the hub answers, so a missing download becomes one clear sentence:

    source = locate("Qwen/Qwen2.5-0.5B-Instruct", kind="model", flag="--model")
    with explain_missing(source):
        AutoModelForCausalLM.from_pretrained(source.name, local_files_only=source.local_files_only)
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from clo import CLOError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class Source:
    name: str  # a local path or a hub id
    kind: str  # "model", "dataset", "translation model"
    flag: str  # the option that sets it, for the error message
    local: bool  # a folder or file on this machine
    local_files_only: bool  # hub id, but the hub does not answer: use the local cache or fail fast


@functools.lru_cache(maxsize=1)
def hub_online(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection (False at once under HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def locate(name: str, kind: str, flag: str) -> Source:
    """Classify `name` as a local path or a hub id; refuse a local-looking path that does not exist."""
    if Path(name).expanduser().exists():
        return Source(str(Path(name).expanduser()), kind, flag, local=True, local_files_only=True)
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise CLOError(f"{kind} path {name} does not exist")
    return Source(name, kind, flag, local=False, local_files_only=not hub_online())


def offline_message(source: Source) -> str:
    return (
        f"cannot load {source.kind} '{source.name}': the Hugging Face hub is unreachable and it is not in the local cache; "
        f"download it on a connected machine and pass its local folder with {source.flag} PATH"
    )


@contextlib.contextmanager
def explain_missing(source: Source):
    """Turn the hub libraries' download failures into one CLOError sentence."""
    try:
        yield
    except CLOError:
        raise
    except (OSError, ValueError) as e:  # OSError covers ConnectionError and LocalEntryNotFoundError
        if source.local:
            raise CLOError(f"cannot load {source.kind} from {source.name}: {str(e).splitlines()[0]}") from None
        if source.local_files_only or "connect" in str(e).lower() or "offline" in str(e).lower():
            raise CLOError(offline_message(source)) from None
        raise CLOError(f"cannot load {source.kind} '{source.name}' from the hub: {str(e).splitlines()[0]}") from None

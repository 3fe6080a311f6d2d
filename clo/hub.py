"""Where a model or dataset comes from: a local folder, the local hub cache, or the Hugging Face hub.

Hub libraries retry for most of a minute before failing when the network is down. This module asks
once, with a short timeout, whether the hub answers, so a missing download becomes one clear sentence:

    source = locate("Qwen/Qwen2.5-0.5B-Instruct", kind="model", flag="--model")
    with explain_missing(source):
        AutoModelForCausalLM.from_pretrained(source.name, local_files_only=source.local_files_only)

The question is one HTTP request, `GET {HF_ENDPOINT}/api/models?limit=1`, sent the way huggingface_hub sends
its own: through an HTTP proxy when HTTPS_PROXY / HTTP_PROXY / ALL_PROXY say so (NO_PROXY respected), as on a
Space or a lab machine behind a proxy. HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) answers False at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from clo import CLOError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class Source:
    name: str  # a local path or a hub id
    kind: str  # "model", "dataset", "translation model"
    flag: str  # the option that sets it, for the error message
    local: bool  # a folder or file on this machine
    local_files_only: bool  # hub id, but the hub does not answer: use the local cache or fail fast


_TRUE = ("1", "ON", "YES", "TRUE")  # huggingface_hub.constants' spelling of a true environment variable


@functools.lru_cache(maxsize=1)
def hub_online(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint answers `GET /api/models?limit=1` (`timeout` seconds each to connect and to read).

    Reads the environment at call time, then huggingface_hub's import-time constants: offline, with no request
    sent, if HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is true in either; the endpoint is HF_ENDPOINT, else
    `constants.ENDPOINT`. Reachable means an answer under 500 other than 407 (redirects are not followed):
    401/403/404 still show the hub is there. A 5xx is what a proxy sends for a hub it cannot reach (squid
    503/504, 3proxy 502, tinyproxy 500) or the hub's own outage, and 407 is a proxy asking for its password;
    no download gets through either. No answer at all (refused, DNS failure, timeout, TLS failure, a proxy
    refusing CONNECT) is unreachable too.
    """
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")  # huggingface_hub's rule
    if (env or "").upper() in _TRUE or constants.is_offline_mode():
        return False
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    # A fresh client, not huggingface_hub's get_session(): that one is shared and built once, so it keeps the
    # proxy variables of the moment it was made, and its request hook refuses by import-time offline mode.
    # This one is built as huggingface_hub's default_client_factory builds its own (same library, trust_env on,
    # so proxies, NO_PROXY and SSL_CERT_FILE come from the environment now) and sends the hub's user agent,
    # without a token. A client factory set with set_client_factory() is not consulted.
    try:
        import httpx2 as httpx  # huggingface_hub 2.x sends its requests with httpx2
    except ImportError:
        import httpx  # huggingface_hub 1.x
    from huggingface_hub.utils import build_hf_headers

    try:
        with httpx.Client(headers=build_hf_headers(token=False), timeout=timeout, trust_env=True) as client:
            status = client.get(f"{endpoint}/api/models", params={"limit": 1}).status_code
    except Exception:  # noqa: BLE001 (no answer, a malformed endpoint, a proxy refusing CONNECT: all unreachable)
        return False
    return status < 500 and status != 407


def locate(name: str, kind: str, flag: str) -> Source:
    """Classify `name` as a local path or a hub id; refuse a local-looking path that does not exist, and a LoRA
    adapter folder given as a base model. A model shorthand of clo.registry (`smollm2`, ...) becomes its folder,
    made on first use."""
    if kind == "model":
        from clo.registry import resolve_model

        name = resolve_model(name)
    if Path(name).expanduser().exists():
        if kind == "model":
            check_model_folder(Path(name).expanduser(), flag)
        return Source(str(Path(name).expanduser()), kind, flag, local=True, local_files_only=True)
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise CLOError(f"{kind} path {name} does not exist")
    return Source(name, kind, flag, local=False, local_files_only=not hub_online())


def check_model_folder(path: Path, flag: str = "--model") -> None:
    """A model folder has config.json. One with adapter_config.json instead is an adapter: say so, and name its base."""
    if not path.is_dir() or (path / "config.json").exists():
        return
    if not (path / "adapter_config.json").is_file():
        raise CLOError(f"model folder {path} has no config.json, so it is not a model saved by transformers; pass as "
                       f"{flag} the folder that holds config.json and the weights, or a hub id")
    try:
        base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        base = None
    said = (f"its base is {base}; pass that as {flag}" if isinstance(base, str) and base
            else f"its adapter_config.json does not name its base model; pass the base model as {flag}")
    raise CLOError(f"{path} is a LoRA adapter folder, not a base model; {said} and serve the adapter from its "
                   "folder's parent with --adapters-dir (or --adapters NAME)")


def _reason(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, whole up to `limit` characters (its first line alone may stop at a colon)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


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
            raise CLOError(f"cannot load {source.kind} from {source.name}: {_reason(e)}") from None
        if source.local_files_only or "connect" in str(e).lower() or "offline" in str(e).lower():
            raise CLOError(offline_message(source)) from None
        raise CLOError(f"cannot load {source.kind} '{source.name}' from the hub: {_reason(e)}") from None

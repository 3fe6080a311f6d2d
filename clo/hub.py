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

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")  # a hub repo id: name or owner/name


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
    adapter folder given as a base model. `name` is taken as it is: a caller that accepts a model shorthand
    (`smollm2`, ...) resolves it first (clo.models.table.locate_model), so this leaf never builds a model."""
    if Path(name).expanduser().exists():
        if kind == "model":
            check_model_folder(Path(name).expanduser(), flag)
        return Source(str(Path(name).expanduser()), kind, flag, local=True, local_files_only=True)
    if name.startswith((".", "/", "~")) or not HUB_ID.match(name):
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


# ---- what a model is, wherever it lies ----

FINGERPRINT_SAMPLE = 1024  # bytes read at the start, middle and end of every tensor
_WHERE_SAVED = ("_name_or_path", "transformers_version", "torch_dtype", "dtype")  # config fields that say how it was saved


def model_fingerprint(name_or_path: str, revision: str | None = None) -> str | None:
    """What a base model is, not where it lies: "sha256:<hex>" over its config.json and its safetensors weights.

    The config enters parsed, without the fields that say where and how it was saved (`_name_or_path`,
    `transformers_version`, `torch_dtype`/`dtype`); the weights enter tensor by tensor, in name order: the
    tensor's name, dtype and shape from the safetensors header, and three samples of its bytes (the first, middle
    and last `FINGERPRINT_SAMPLE` bytes, the whole tensor when it is smaller). The file names and offsets do not
    enter, so a copy, or the same tensors sharded otherwise, has the same fingerprint.

    Cheap at any size: an 8B model (about 300 tensors in 4 files) costs under 1 MB of reads, where hashing every
    byte would read 16 GB. It still tells two models of the same shape apart (another seed, a fine-tune, a merged
    adapter: such a change reaches every part of a tensor, so its samples), though an edit confined to bytes
    between a tensor's samples would go unseen. A hub id is fingerprinted the same way from its snapshot in the local
    hub cache (no request is sent), so a local copy of a hub model matches it. None when there is nothing to read
    (no such folder, not in the cache, no safetensors weights): callers then compare names.
    """
    folder = Path(str(name_or_path)).expanduser()
    if not folder.is_dir():
        folder = _cached_snapshot(str(name_or_path), revision)
        if folder is None:
            return None
    files = [folder / "config.json", *sorted(folder.glob("*.safetensors"))]
    try:
        stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError:
        return None
    if len(files) < 2:
        return None
    return _fingerprint(str(folder.resolve()), stamp)


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The folder of `repo_id`'s snapshot in the local hub cache (the one holding its config.json), or None."""
    if not HUB_ID.match(repo_id) or "/" not in repo_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 (a malformed id or revision: not in the cache, as far as we can tell)
        return None
    return Path(found).parent if isinstance(found, str) else None


@functools.lru_cache(maxsize=16)
def _fingerprint(folder: str, stamp: tuple) -> str | None:
    """model_fingerprint of `folder`; `stamp` (names, sizes, mtimes) makes a changed folder a new cache entry."""
    import hashlib
    import struct

    digest = hashlib.sha256()
    try:
        config = json.loads(Path(folder, "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            return None
        digest.update(json.dumps({k: v for k, v in config.items() if k not in _WHERE_SAVED}, sort_keys=True).encode())
        tensors = []
        for file in sorted(Path(folder).glob("*.safetensors")):
            with file.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                if size > file.stat().st_size:
                    return None  # not a safetensors file: its header would be longer than the file
                header = json.loads(fh.read(size))
            tensors += [(name, file, 8 + size, entry) for name, entry in header.items() if name != "__metadata__"]
        with contextlib.ExitStack() as stack:
            handles = {}
            for name, file, start, entry in sorted(tensors, key=lambda t: t[0]):
                digest.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
                begin, end = (start + offset for offset in entry["data_offsets"])
                n = FINGERPRINT_SAMPLE
                spans = [(begin, end - begin)] if end - begin <= 3 * n else [(begin, n), ((begin + end - n) // 2, n), (end - n, n)]
                fh = handles.get(file) or handles.setdefault(file, stack.enter_context(file.open("rb")))
                for offset, length in spans:
                    fh.seek(offset)
                    digest.update(fh.read(length))
    except (OSError, ValueError, KeyError, TypeError, struct.error):  # unreadable or not safetensors: no fingerprint
        return None
    return "sha256:" + digest.hexdigest()


# ---- adapters on the hub ----

# an adapter named by its hub repo, optionally at a revision (a branch, a tag or a commit): owner/name[@revision]
HUB_ADAPTER = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@([A-Za-z0-9][A-Za-z0-9._/-]*))?$")
# what an adapter repo is fetched for: the weights (safetensors only: a pickle is never downloaded), their config,
# and the files that describe them; anything else in the repo stays on the hub
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "manifest.json", "metrics.json", "recipe.yaml",
                 "README.md")


@dataclass(frozen=True)
class HubAdapter:
    repo_id: str
    revision: str | None  # as asked (None: the default branch)
    folder: Path  # its snapshot in the local hub cache
    commit: str  # the commit that snapshot is: recorded with every vote on it

    @property
    def name(self) -> str:
        """The variant's name: the repo's name (someone/qwen2.5-3b-clo-sw → qwen2.5-3b-clo-sw)."""
        return self.repo_id.split("/", 1)[1]

    @property
    def source(self) -> str:
        return f"{self.repo_id}@{self.commit}"


def check_repo_id(repo_id: str | None, says: str) -> str:
    """`repo_id` as a hub repo id owner/name (no @revision), by huggingface_hub's own rules (validate_repo_id: no
    leading or trailing - or ., no -- or .., not .git); anything else is the caller's sentence `says` naming its
    option, its `{!r}` filled with the id as given."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id or "")
    except HFValidationError:
        raise CLOError(says.format(repo_id)) from None
    if "/" not in (repo_id or ""):  # the hub allows a bare name for its own old repos; a repo of ours has an owner
        raise CLOError(says.format(repo_id))
    return repo_id


def is_hub_adapter(spec: str) -> bool:
    """Whether `spec` names an adapter on the hub (owner/name[@revision]) rather than a folder under --adapters-dir."""
    return bool(HUB_ADAPTER.match(spec))


def served_name(spec: str) -> str:
    """The variant an adapter named `spec` is served as: a hub repo's name, else `spec` (a folder's name)."""
    match = HUB_ADAPTER.match(spec)
    return match.group(1).split("/", 1)[1] if match else spec


def _endpoint() -> str | None:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None


def fetch_adapter(spec: str) -> HubAdapter:
    """The adapter repo `spec` (owner/name[@revision]) in the local hub cache: downloaded when the hub answers (only
    ADAPTER_FILES), else the cached snapshot of that revision, so a cached adapter serves with the hub down. Every
    failure is one CLOError sentence saying what to do."""
    from huggingface_hub import snapshot_download

    match = HUB_ADAPTER.match(spec)
    if not match:
        raise CLOError(f"{spec!r} is not an adapter on the hub: name one as owner/name or owner/name@revision")
    repo_id, revision = match.groups()
    online = hub_online()
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(ADAPTER_FILES),
                                        local_files_only=not online, endpoint=_endpoint()))
    except Exception as e:  # noqa: BLE001 (each of huggingface_hub's failures becomes one sentence below)
        raise CLOError(_fetch_failure(spec, repo_id, revision, online, e)) from None
    if not (folder / "adapter_model.safetensors").is_file():
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise CLOError(f"the hub repo {repo_id} has no adapter_model.safetensors (found: {', '.join(found) or 'nothing'}); "
                       "only LoRA adapters saved as safetensors are served")
    return HubAdapter(repo_id, revision, folder, folder.name)  # the cache names each snapshot folder by its commit


def _fetch_failure(spec: str, repo_id: str, revision: str | None, online: bool, e: Exception) -> str:
    kind = type(e).__name__
    at = f" at revision {revision}" if revision else ""
    if not online:
        return (f"adapter {spec} is not in the local hub cache and the Hugging Face hub is unreachable: fetch it on a "
                f"connected machine (`hf download {repo_id}`), or copy its folder under --adapters-dir and name it "
                "by the folder's name")
    if kind == "RevisionNotFoundError":
        return f"the hub repo {repo_id} has no revision {revision!r}: name a branch, a tag or a commit it has"
    if kind in ("RepositoryNotFoundError", "GatedRepoError"):
        return (f"adapter {spec}: no model repo {repo_id} on the hub that this token may read (a private or gated "
                "repo needs HF_TOKEN or `hf auth login`)")
    return f"cannot fetch adapter {spec}{at} from the hub: {_reason(e)}"

"""The generation interface every engine implements, and the adapter folders it serves.

A *variant* is the base model ("base") or one adapter, named after its folder under adapters/.

    engine = load_engine("auto", model="Qwen/Qwen2.5-0.5B-Instruct", adapters_dir="adapters")
    answers = engine.generate([Request("base", [{"role": "user", "content": "안녕?"}]),
                               Request("clo-ko", [{"role": "user", "content": "안녕?"}])])
    for snapshot in engine.stream(requests): ...   # the answers so far, in request order
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import queue
import re
import threading
import time
import unicodedata
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from clo import CLOError
from clo.files import remove_stale

BASE = "base"
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_TOKENS_LIMIT = 1_000_000  # new tokens per answer: far above any context here, far below what overflows a tensor


def _whole(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _real(x) -> bool:
    """An int or float that is not NaN (inf is left to the range check, which names it)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and not math.isnan(x)


@dataclass
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    # above 1 makes a token already in the prompt or answer less likely (transformers' and vLLM's multiplicative
    # penalty on its logit): what keeps a small model from looping
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()  # an answer ends before the first of these strings (not shown), finish_reason "stop"

    def check(self) -> None:
        """One sentence naming the field for a value no engine can decode with (NaN, inf, 2.5 tokens, a billion)."""
        if not _whole(self.max_tokens) or not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise CLOError(f"max_tokens must be ≥ 1 and at most {MAX_TOKENS_LIMIT:,}, a whole number of tokens, "
                           f"got {self.max_tokens!r}")
        if not _real(self.temperature) or not 0 <= self.temperature < math.inf:
            raise CLOError(f"temperature must be a finite number ≥ 0 (0 = greedy), got {self.temperature!r}")
        if not _real(self.top_p) or not 0 < self.top_p <= 1:
            raise CLOError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not _whole(self.seed) or not 0 <= self.seed < 2**63):
            raise CLOError(f"seed must be a whole number ≥ 0 or unset, got {self.seed!r}")
        if not _real(self.repetition_penalty) or not 0 < self.repetition_penalty <= 10:
            raise CLOError(f"repetition_penalty must be a number in (0, 10] (1 = none), got {self.repetition_penalty!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop) or len(self.stop) > 8:
            raise CLOError(f"stop must be a tuple of at most 8 non-empty strings, got {self.stop!r}")

    def cut(self, text: str) -> tuple[str, bool]:
        """`text` up to the first stop string, and whether one was found (every engine ends an answer the same way)."""
        ends = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return (text[: min(ends)], True) if ends else (text, False)


UNSEEN = {"Cc", "Cf", "Cs", "Cn", "Zs", "Zl", "Zp"}  # Unicode categories with nothing to see: controls, format
#   characters (zero-width spaces and joiners, BOM), unassigned code points, spaces and line breaks
BLANK_LETTERS = "\u034f\u115f\u1160\u2800\u3164\uffa0"  # drawn as nothing though not in those categories
CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # NUL and the C0 controls but tab and newline, and DEL


def prompt_text(text: str | None) -> str:
    """A visitor's prompt as it is generated from and stored: line breaks as \\n, NULs and other control characters
    (but tab and newline) removed, surrounding whitespace stripped; "" when no character in it is printable (only
    controls, spaces, zero-width or format characters, variation selectors, fillers), which every check refuses
    as it refuses an empty prompt."""
    text = CONTROLS.sub("", str(text or "").replace("\r\n", "\n").replace("\r", "\n")).strip()
    seen = any(unicodedata.category(c) not in UNSEEN and c not in BLANK_LETTERS
               and not ("\ufe00" <= c <= "\ufe0f" or "\U000e0100" <= c <= "\U000e01ef") for c in text)
    return text if seen else ""


@dataclass
class Request:
    variant: str
    messages: list[dict]
    sampling: Sampling = field(default_factory=Sampling)
    owner: str = ""  # who asked (the app puts the visitor's network address): schedulers serve owners in turn


@dataclass
class Answer:
    variant: str
    text: str = ""
    tokens: int = 0
    seconds: float = 0.0
    finish_reason: str | None = None  # "stop", "length"; None while streaming
    first_token_s: float | None = None  # time to the first token, from submission (queueing included)
    batch: int = 0  # the most sequences that shared a decoding step with this one (itself included)
    error: str | None = None  # why this request failed (finish_reason "error"); the text so far is not an answer

    @property
    def tokens_per_second(self) -> float:
        """Decoding speed after the first token (0 until a second token arrives)."""
        if self.first_token_s is None or self.tokens < 2 or self.seconds <= self.first_token_s:
            return self.tokens / self.seconds if self.seconds > 0 else 0.0
        return (self.tokens - 1) / (self.seconds - self.first_token_s)


class Job:
    """One caller's requests inside a shared scheduler: its answers, its own queue of snapshots, a cancel flag.

    The engine's loop thread updates `answers` and calls `publish()` / `finish()` / `fail()`; the caller's
    `Engine.stream` reads the queue and sets `cancelled` when it stops reading (closed generator, visitor gone).
    """

    def __init__(self, requests: list[Request]):
        self.id = uuid.uuid4().hex[:12]
        self.requests = requests
        self.owner = requests[0].owner if requests else ""  # one caller's requests share an owner (fair_order)
        self.answers = [Answer(r.variant) for r in requests]
        self.queue: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.submitted = time.perf_counter()
        self.done = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.submitted

    def publish(self) -> None:
        self.queue.put([Answer(**vars(a)) for a in self.answers])

    def finish(self) -> None:
        for a in self.answers:
            a.finish_reason = a.finish_reason or "length"
        self.done = True
        self.publish()
        self.queue.put(None)

    def fail(self, error: BaseException) -> None:
        self.done = True
        self.queue.put(error if isinstance(error, CLOError) else
                       CLOError(f"generation failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"))

    def results(self) -> Iterator[list[Answer]]:
        """The snapshots as they come; the last one is final. Stopping early cancels the job."""
        try:
            while (item := self.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancelled.set()


def fair_order(jobs: list[Job], last_served: dict[str, int] | None = None) -> list[Job]:
    """The waiting `jobs` (in arrival order) in the order a scheduler should serve them: owners in turn
    (round-robin), each owner's own jobs in arrival order. Owners take their turns by `last_served` (owner -> the
    number of the batch that last served it; never served first), then by their oldest job. One owner's backlog
    of n jobs thus puts at most one of its jobs ahead of another owner's first, instead of n, and one served just
    now lets the others go first next time (how many jobs an owner may have waiting at all is the app's admission
    limit, clo.app.context)."""
    turns: dict[str, list[Job]] = {}
    for job in jobs:
        turns.setdefault(job.owner, []).append(job)
    last_served = last_served or {}
    lanes = sorted(turns.values(), key=lambda lane: last_served.get(lane[0].owner, -1))  # stable: then oldest job
    ordered = []
    for i in range(max(map(len, lanes), default=0)):
        ordered += [lane[i] for lane in lanes if i < len(lane)]
    return ordered


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    base_model: str
    rank: int
    sha256: str  # of the adapter's weights and config: votes on a retrained adapter are not mixed with the old
    method: str | None = None
    target_lang: str | None = None
    modules_to_save: tuple[str, ...] = ()
    base_fingerprint: str | None = None  # clo.hub.model_fingerprint of the base it was trained on (None: saved before)
    source: str | None = None  # "owner/name@commit" for an adapter fetched from the hub (clo.hub.fetch_adapter)


def read_adapter(path: str | Path, name: str | None = None, source: str | None = None) -> Adapter:
    """Read and check one adapter folder; a clear error for missing or malformed files. `source`: the hub repo and
    commit the folder is a snapshot of."""
    path = Path(path)
    if not path.is_dir():
        raise CLOError(f"adapter folder {path} does not exist")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise CLOError(f"adapter folder {path} is missing {', '.join(missing)}")
    config = _json_object(path / "adapter_config.json")
    _check_lora_config(path / "adapter_config.json", config)
    manifest = _json_object(path / "manifest.json") if (path / "manifest.json").is_file() else {}
    recorded = manifest.get("base_model") or {}
    recorded = {"name_or_path": recorded} if isinstance(recorded, str) else recorded
    if not isinstance(recorded, dict) or not isinstance(recorded.get("name_or_path") or "", str):
        raise CLOError(f"{path / 'manifest.json'}: base_model must be an object with a name_or_path string, "
                       f"got {json.dumps(recorded)[:80]}; fix it or delete manifest.json")
    for key in ("method", "target_lang"):
        if not isinstance(manifest.get(key) or "", str):
            raise CLOError(f"{path / 'manifest.json'}: {key} must be a string, got {json.dumps(manifest[key])[:80]}; "
                           "fix it or delete manifest.json")
    base_model = config.get("base_model_name_or_path") or ""
    if not isinstance(base_model, str):
        raise CLOError(f"{path / 'adapter_config.json'}: base_model_name_or_path must be a string, got {base_model!r}")
    _check_safetensors(path / "adapter_model.safetensors")
    digest = hashlib.sha256()
    for f in REQUIRED_FILES:
        digest.update((path / f).read_bytes())
    return Adapter(
        name=name or path.name,
        path=path.resolve(),
        base_model=recorded.get("name_or_path") or base_model,
        rank=config["r"],
        sha256=digest.hexdigest(),
        method=manifest.get("method"),
        target_lang=manifest.get("target_lang"),
        modules_to_save=tuple(config.get("modules_to_save") or ()),
        base_fingerprint=recorded.get("fingerprint") if isinstance(recorded.get("fingerprint"), str) else None,
        source=source,
    )


def _json_object(file: Path) -> dict:
    """The JSON object in `file`; any other content (not UTF-8, not JSON, a list, a number) is one sentence naming it."""
    try:
        text = file.read_bytes().decode("utf-8")
        value = json.loads(text)
    except UnicodeDecodeError as e:
        raise CLOError(f"{file} is not UTF-8 text (byte {e.start}): it is damaged or not a JSON file; "
                       "replace it with the one saved with the adapter") from None
    except json.JSONDecodeError as e:
        raise CLOError(f"{file} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); "
                       "replace it with the one saved with the adapter") from None
    except RecursionError:
        raise CLOError(f"{file} is nested too deeply to be an adapter's JSON; replace it with the one saved with the adapter") from None
    except OSError as e:
        raise CLOError(f"cannot read {file}: {e.strerror or e}") from None
    if not isinstance(value, dict):
        raise CLOError(f"{file} holds a JSON {_json_kind(value)}, not an object {{...}}; "
                       "replace it with the one saved with the adapter")
    return value


def _json_kind(value) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _check_lora_config(file: Path, config: dict) -> None:
    """The fields every engine reads from adapter_config.json: a LoRA adapter with a rank and its target layers."""
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise CLOError(f"{file}: peft_type is {kind!r}; only LoRA adapters (peft_type LORA) can be served")
    r = config.get("r")
    if not _whole(r) or r < 1:
        raise CLOError(f"{file}: r (the LoRA rank) must be a whole number ≥ 1, got {json.dumps(r)}")
    targets = config.get("target_modules")
    listed = isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)
    if not (listed or (isinstance(targets, str) and targets) or (targets is None and config.get("target_parameters"))):
        raise CLOError(f"{file}: target_modules must be a list of layer names (or a regular expression), "
                       f"got {json.dumps(targets)[:80]}")
    saved = config.get("modules_to_save")
    if saved is not None and not (isinstance(saved, list) and all(isinstance(m, str) for m in saved)):
        raise CLOError(f"{file}: modules_to_save must be a list of layer names or null, got {json.dumps(saved)[:80]}")


def _check_safetensors(file: Path) -> None:
    """The weights file's header parses (a truncated or foreign file is named here, not deep in an engine)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="numpy") as f:  # the header only; numpy spares importing torch
            f.keys()
    except Exception as e:  # noqa: BLE001 (SafetensorError, OSError: all mean the file is not usable)
        reason = " ".join(str(e).split())[:160]
        raise CLOError(f"{file} is not a readable safetensors file ({reason}); "
                       "replace it with the one saved with the adapter") from None


def find_adapters(adapters_dir: str | Path, names: list[str] | None = None) -> list[Adapter]:
    """The adapters under `adapters_dir` (every complete folder, or those named: [] names none), sorted by name.

    A name is a folder under `adapters_dir`, or, when no such folder exists, an adapter on the hub named
    owner/name[@revision] (clo.hub.fetch_adapter: fetched into the hub cache, served from there as the repo's name).
    Hidden folders are never adapters: `.tmp-*` / `.old-*` are staging folders of a save (clo.files.staging), and
    those that a killed run left behind are removed here first, so every engine start (and the app's) cleans up.
    """
    root = Path(adapters_dir)
    for folder in remove_stale(root):
        print(f"[clo] cleaned up {folder}, left by a run that was killed while saving", flush=True)
    if names is None:
        if not root.is_dir():
            return []
        return [read_adapter(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
                and (p / "adapter_config.json").is_file()]
    found = [named_adapter(root, n) for n in names]
    served_once([a.name for a in found])
    return found


def served_once(names: list[str]) -> None:
    """Refuse two adapters served under one variant name (the second would silently replace the first)."""
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    if twice:
        raise CLOError(f"two adapters would both be served as {twice[0]!r} (a hub repo is served by its name): name "
                       "each variant once, or copy one under --adapters-dir with another folder name")


def named_adapter(adapters_dir: str | Path, name: str) -> Adapter:
    """The adapter `name` names: its folder under `adapters_dir`, else the hub repo owner/name[@revision]."""
    from clo.hub import fetch_adapter, is_hub_adapter

    folder = Path(adapters_dir) / name
    if folder.is_dir() or not is_hub_adapter(name):
        return read_adapter(folder, name)
    hub = fetch_adapter(name)
    return read_adapter(hub.folder, hub.name, source=hub.source)


def same_model(a: str, b: str, recorded: str | None = None) -> bool:
    """Two model references are the same model: the same config and weights (clo.hub.model_fingerprint), so an exact
    copy at another path is the same model and another model at the same path is not. `recorded` is a's fingerprint
    taken earlier (an adapter's manifest, from the base it was trained on). Where a fingerprint is unknown (an
    adapter saved before they were recorded, a hub id not in the local cache), names decide: equal ids, or paths to
    the same folder."""
    from clo.hub import model_fingerprint

    fa = recorded or model_fingerprint(a)
    fb = model_fingerprint(b) if fa else None
    if fa and fb:
        return fa == fb
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


class Engine(ABC):
    """Base model loaded once, plus adapters; every variant decoded together."""

    kind = "engine"

    def __init__(self, model: str):
        self.model = model
        self.adapters: dict[str, Adapter] = {}

    def base_identity(self) -> tuple[str, str | None]:
        """The base model served, as votes record it: its name as given and its fingerprint
        (clo.hub.model_fingerprint; None where its files cannot be read here, e.g. behind a remote server)."""
        if getattr(self, "_base_identity", None) is None:
            from clo.hub import model_fingerprint

            self._base_identity = (str(self.model), model_fingerprint(str(self.model)))
        return self._base_identity

    # ---- variants ----
    def variants(self) -> dict[str, str | None]:
        """Variant name -> adapter hash (None for the base)."""
        return {BASE: None, **{n: a.sha256 for n, a in self.adapters.items()}}

    def sources(self) -> dict[str, str]:
        """Variant name -> "owner/name@commit" for each adapter fetched from the hub (votes record it)."""
        return {n: a.source for n, a in self.adapters.items() if a.source}

    def check_adapter(self, adapter: Adapter) -> None:
        if adapter.name == BASE:
            raise CLOError(f"an adapter cannot be named {BASE!r}")
        if adapter.name.startswith("."):
            raise CLOError(f"{adapter.path} is a hidden folder (a save in progress, or one a killed run left), not an "
                           "adapter; serve a folder whose name does not start with '.'")
        if adapter.base_model and not same_model(adapter.base_model, self.model, adapter.base_fingerprint):
            differ = ", whose config or weights differ from those it was trained on" if adapter.base_fingerprint else ""
            raise CLOError(f"adapter {adapter.name} was trained on {adapter.base_model}, but this engine serves {self.model}{differ}")

    def add_adapter(self, path: str | Path, name: str | None = None, source: str | None = None) -> Adapter:
        """Load (or replace) an adapter while serving; returns what was loaded. `source`: the hub repo and commit
        the folder is a snapshot of (clo.hub.HubAdapter.source)."""
        adapter = read_adapter(path, name, source)
        self.check_adapter(adapter)
        self._load(adapter)
        self.adapters[adapter.name] = adapter
        return adapter

    # ---- generation ----
    def check(self, requests: list[Request]) -> None:
        if not requests:
            raise CLOError("no requests")
        for r in requests:
            if r.variant not in self.variants():
                raise CLOError(f"unknown variant {r.variant!r}; this engine serves {', '.join(self.variants())}")
            if not r.messages or not any(prompt_text(m.get("content")) for m in r.messages if m.get("role") == "user"):
                raise CLOError("empty prompt: write a message first")
            r.sampling.check()

    def generate(self, requests: list[Request]) -> list[Answer]:
        """All requests in one batch; the answers in request order."""
        final = None
        for final in self.stream(requests):
            pass
        return final

    @abstractmethod
    def stream(self, requests: list[Request]) -> Iterator[list[Answer]]:
        """Snapshots of all answers as tokens arrive; the last one is final (finish_reason set)."""

    @abstractmethod
    def _load(self, adapter: Adapter) -> None:
        """Make `adapter` servable (replacing one of the same name)."""

    def close(self) -> None:
        pass

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
import queue
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from clo import CLOError

BASE = "base"
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None

    def check(self) -> None:
        if self.max_tokens <= 0:
            raise CLOError(f"max_tokens must be ≥ 1, got {self.max_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise CLOError(f"temperature must be ≥ 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")


@dataclass
class Request:
    variant: str
    messages: list[dict]
    sampling: Sampling = field(default_factory=Sampling)


@dataclass
class Answer:
    variant: str
    text: str = ""
    tokens: int = 0
    seconds: float = 0.0
    finish_reason: str | None = None  # "stop", "length"; None while streaming
    first_token_s: float | None = None  # time to the first token, from submission (queueing included)
    batch: int = 0  # the most sequences that shared a decoding step with this one (itself included)

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


def read_adapter(path: str | Path, name: str | None = None) -> Adapter:
    """Read and check one adapter folder; a clear error for missing or malformed files."""
    path = Path(path)
    if not path.is_dir():
        raise CLOError(f"adapter folder {path} does not exist")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise CLOError(f"adapter folder {path} is missing {', '.join(missing)}")
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CLOError(f"{path / 'adapter_config.json'}: not valid JSON ({e.msg}, line {e.lineno})") from None
    manifest = {}
    if (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    digest = hashlib.sha256()
    for f in REQUIRED_FILES:
        digest.update((path / f).read_bytes())
    return Adapter(
        name=name or path.name,
        path=path.resolve(),
        base_model=manifest.get("base_model", {}).get("name_or_path") or config.get("base_model_name_or_path") or "",
        rank=int(config.get("r", 0)),
        sha256=digest.hexdigest(),
        method=manifest.get("method"),
        target_lang=manifest.get("target_lang"),
        modules_to_save=tuple(config.get("modules_to_save") or ()),
    )


def find_adapters(adapters_dir: str | Path, names: list[str] | None = None) -> list[Adapter]:
    """The adapters under `adapters_dir` (every complete folder, or those named), sorted by name."""
    root = Path(adapters_dir)
    if names:
        return [read_adapter(root / n, n) for n in names]
    if not root.is_dir():
        return []
    return [read_adapter(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
            and (p / "adapter_config.json").is_file()]


def same_model(a: str, b: str) -> bool:
    """Two model references name the same model: equal ids, or paths to the same folder."""
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

    # ---- variants ----
    def variants(self) -> dict[str, str | None]:
        """Variant name -> adapter hash (None for the base)."""
        return {BASE: None, **{n: a.sha256 for n, a in self.adapters.items()}}

    def check_adapter(self, adapter: Adapter) -> None:
        if adapter.name == BASE:
            raise CLOError(f"an adapter cannot be named {BASE!r}")
        if adapter.base_model and not same_model(adapter.base_model, self.model):
            raise CLOError(f"adapter {adapter.name} was trained on {adapter.base_model}, but this engine serves {self.model}")

    def add_adapter(self, path: str | Path, name: str | None = None) -> Adapter:
        """Load (or replace) an adapter while serving; returns what was loaded."""
        adapter = read_adapter(path, name)
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
            if not r.messages or not any(str(m.get("content", "")).strip() for m in r.messages if m.get("role") == "user"):
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

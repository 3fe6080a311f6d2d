"""Serve at once on a quick engine, hand over to a faster one when it has started.

    engine = Handover(PeftEngine(model, found), lambda adapters: VLLMEngine(model, adapters), reason="vllm ... on cpu")

On a CPU, vLLM takes about twice as long as PEFT to import and start (30 s against 15 s for SmolLM2 on 2 cores),
then decodes 1.5-1.7 times as fast (bench/README.md). The app's `--engine auto` on a CPU therefore serves with PEFT
from the start and builds vLLM in a background thread once the page is up (`begin()`: two starts at once on two
cores would delay the first page by several seconds; a minute after the engine was made it begins anyway). When
vLLM is up it gets every adapter the quick engine serves by then (hot-loaded ones included), and from the next
request on it serves everything; requests already running finish where they started, and the quick engine is
closed once it has none left. If vLLM cannot start, the quick engine serves on and the reason is printed once.
`kind` is always the engine that takes new requests now, so a battle records the engine that really answered it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from clo import CLOError
from clo.engines.base import Adapter, Answer, Engine, Request


class Handover(Engine):
    """`first` serves now; `build(adapters)` makes its successor in a background thread."""

    def __init__(self, first: Engine, build: Callable[[list[Adapter]], Engine], reason: str = "", log=print,
                 poll_s: float = 0.2, begin_within_s: float = 60.0):
        self.model = first.model
        self.current = first
        self.lock = threading.RLock()  # held while a request is handed to an engine and while the engines swap
        self.log, self.poll_s = log, poll_s
        self.state = "starting"  # then "done" or "failed: <why>"
        self.closed = False
        self.started = time.monotonic()
        self.ready = threading.Event()  # set when the handover is over, whichever way it went
        self.go = threading.Event()  # begin(): the successor starts
        self.begin_within_s = begin_within_s
        self.thread = threading.Thread(target=self._hand_over, args=(build, reason), name="clo-handover", daemon=True)
        self.thread.start()

    # ---- what callers see: always the engine taking new requests now ----
    @property
    def kind(self) -> str:
        return self.current.kind

    @property
    def adapters(self) -> dict[str, Adapter]:
        return self.current.adapters

    def variants(self) -> dict[str, str | None]:
        return self.current.variants()

    def check(self, requests: list[Request]) -> None:
        self.current.check(requests)

    def add_adapter(self, path: str | Path, name: str | None = None, source: str | None = None) -> Adapter:
        with self.lock:  # not while the engines swap: the successor is given what the current one serves then
            return self.current.add_adapter(path, name, source)

    def _load(self, adapter: Adapter) -> None:  # add_adapter is the current engine's own
        raise NotImplementedError

    def stream(self, requests: list[Request]) -> Iterator[list[Answer]]:
        with self.lock:  # the request is in the engine's queue before a swap can look at what is left there
            return self.current.stream(requests)

    def unfinished(self) -> int:
        return self.current.unfinished()

    # ---- the handover, in its own thread ----
    def begin(self) -> None:
        """Start the successor now (the app calls it once its page is served)."""
        self.go.set()

    def _hand_over(self, build: Callable[[list[Adapter]], Engine], reason: str) -> None:
        first = self.current
        self.go.wait(self.begin_within_s)
        if self.closed:
            return
        try:
            successor = build(list(first.adapters.values()))
        except Exception as e:  # noqa: BLE001 (any failure to start leaves the quick engine serving)
            self._failed(e, first)
            return
        try:
            with self.lock:
                if self.closed:
                    successor.close()
                    return
                for name, adapter in first.adapters.items():  # loaded while the successor was starting
                    if name not in successor.adapters or successor.adapters[name].sha256 != adapter.sha256:
                        successor.add_adapter(adapter.path, name, adapter.source)
                self.current = successor
        except Exception as e:  # noqa: BLE001 (an adapter the successor refuses: keep the engine that serves it)
            successor.close()
            self._failed(e, first)
            return
        self.state = "done"
        self.log(f"[clo] engine: {successor.kind} took over from {first.kind} {time.monotonic() - self.started:.0f} s "
                 f"after the start ({reason or 'faster batches'}); requests already running finish on {first.kind}",
                 flush=True)
        self.ready.set()
        while first.unfinished():  # its last requests finish where they started
            time.sleep(self.poll_s)
        first.close()

    def _failed(self, error: Exception, first: Engine) -> None:
        first_line = str(error).splitlines()[0][:160] if str(error) else ""
        why = str(error) if isinstance(error, CLOError) else f"{type(error).__name__}: {first_line}"
        self.state = f"failed: {why}"
        self.log(f"[clo] engine: the faster engine did not start ({why}); {first.kind} serves on", flush=True)
        self.ready.set()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            current = self.current
        self.go.set()  # a successor not begun yet never will be
        current.close()

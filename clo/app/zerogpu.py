"""ZeroGPU: the PEFT engine's answers decoded inside `spaces.GPU` calls, streamed back as they are made.

On a ZeroGPU Space the GPU exists only inside a function decorated with `spaces.GPU` (clo.app.jobs.on_gpu).
spaces 0.51 runs each such call in a *forked* process (its `zero/wrappers.py`: `multiprocessing.get_context('fork')`,
arguments in and the result out through queues; a generator function's items one by one) and keeps that process for
later calls while the same GPU stays attached. The engine's scheduler thread lives in the parent and does not
exist in the child, where `engine.generate` would wait forever; so the child decodes on the engine's direct path
(`PeftEngine.generate_here` / `stream_here`): one call's requests in one batch, no batching across visitors.

    answers = zerogpu.generate(engine, requests)              # Services.generate on ZeroGPU: one spaces.GPU call
    for snapshot in zerogpu.stream(engine, requests): ...     # Services.stream: a spaces.GPU generator

Only the requests and the adapters travel to the child (pickled); the engine is reached there through `_ENGINES`,
the child's copy of this process's table. spaces hands back only the class name of an exception other than a
`gr.Error`, so a refusal travels as a `Refusal` value and is raised again here as the `CLOError` it was.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Iterator

from clo import CLOError
from clo.app.jobs import on_gpu
from clo.engines.base import BASE, Adapter, Answer, Engine, Request

_ENGINES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> engine, copied into each fork


@dataclass(frozen=True)
class Refusal:
    """A CLOError raised in the forked worker, carried back as a value (spaces would keep only its class name)."""

    message: str


def generate(engine: Engine, requests: list[Request]) -> list[Answer]:
    """The final answers, decoded in one `spaces.GPU` call."""
    key, adapters = _prepare(engine, requests)
    out = on_gpu(_generate_in_worker)(key, adapters, requests)
    if isinstance(out, Refusal):
        raise CLOError(out.message)
    return out


def stream(engine: Engine, requests: list[Request]) -> Iterator[list[Answer]]:
    """Snapshots of the answers as the worker makes them (a `spaces.GPU` generator: each comes back as it is
    yielded); closing this generator makes spaces stop the worker's, which cancels the rows at the next step."""
    key, adapters = _prepare(engine, requests)  # refused here, before any GPU time is asked for
    return _stream(key, adapters, requests)


def _stream(key: int, adapters: dict[str, Adapter], requests: list[Request]) -> Iterator[list[Answer]]:
    snapshots = on_gpu(_stream_in_worker)(key, adapters, requests)
    try:
        for item in snapshots:
            if isinstance(item, Refusal):
                raise CLOError(item.message)
            yield item
    finally:
        snapshots.close()  # spaces sets its stop event: the worker closes stream_here, which cancels the rows


def _prepare(engine: Engine, requests: list[Request]) -> tuple[int, dict[str, Adapter]]:
    """Check `requests` here (a refusal costs no GPU time) and register the engine for the worker; returns its key
    and the adapters the requests name, as this process serves them now."""
    from clo.engines.peft_engine import PeftEngine

    if not isinstance(engine, PeftEngine):
        raise CLOError(f"on ZeroGPU the app answers with the PEFT engine inside spaces.GPU calls, not the {engine.kind} "
                       "engine: start it with --engine peft (CLO_ENGINE=peft) or auto")
    engine.check(requests)  # the variants, the sampling and each prompt's length: the worker checks none again
    _ENGINES[id(engine)] = engine
    return id(engine), {r.variant: engine.adapters[r.variant] for r in requests if r.variant != BASE}


def _engine_in_worker(key: int, adapters: dict[str, Adapter]):
    """The worker's copy of the engine, with the adapters the parent serves now: a worker forked before an adapter
    was (re)loaded in the parent (spaces keeps workers between calls) loads it from its folder first."""
    engine = _ENGINES.get(key)
    if engine is None:
        raise CLOError("this GPU worker was forked before the engine was started: try again")
    engine.catch_up(adapters)
    return engine


def _generate_in_worker(key: int, adapters: dict[str, Adapter], requests: list[Request]):
    """Runs in spaces' forked worker: the direct path, no scheduler thread."""
    try:
        return _engine_in_worker(key, adapters).generate_here(requests)
    except CLOError as e:
        return Refusal(str(e))


def _stream_in_worker(key: int, adapters: dict[str, Adapter], requests: list[Request]):
    """Runs in spaces' forked worker, a generator: each snapshot goes back through spaces' queue as it is made."""
    try:
        yield from _engine_in_worker(key, adapters).stream_here(requests)
    except CLOError as e:
        yield Refusal(str(e))

"""Serving the base model and its adapters side by side: one interface, three engines.

    from clo.engines import load_engine
    engine = load_engine("auto", model="Qwen/Qwen2.5-0.5B-Instruct", adapters_dir="adapters")

- vllm:   in-process vLLM with multi-LoRA (clo.engines.vllm_engine)
- remote: a `vllm serve --enable-lora` server's OpenAI-compatible API (clo.engines.remote)
- peft:   transformers + PEFT mixed-adapter batches (clo.engines.peft_engine), for CPUs and ZeroGPU
- auto:   vllm when it is importable and usable here, else peft; the choice and its reason are logged once.
          With handover=True (the app) on vLLM's CPU build: PEFT serves at once and vLLM takes over when it has
          started (clo.engines.handover), so the first page does not wait for vLLM's slow start.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from clo import CLOError
from clo.engines.base import BASE, Adapter, Answer, Engine, Request, Sampling, find_adapters, read_adapter, served_once

__all__ = ["BASE", "Adapter", "Answer", "Engine", "Request", "Sampling", "find_adapters", "read_adapter", "load_engine", "choose_engine"]
log = logging.getLogger("clo.engines")
ENGINES = ("auto", "vllm", "remote", "peft")


def choose_engine(kind: str = "auto") -> tuple[str, str]:
    """(engine, reason) for `kind`; auto prefers vLLM where it can run."""
    if kind not in ENGINES:
        raise CLOError(f"unknown engine {kind!r}; choose from {', '.join(ENGINES)}")
    if kind != "auto":
        return kind, "asked for"
    from clo.engines.vllm_engine import vllm_usable

    usable, why = vllm_usable()
    return ("vllm", why) if usable else ("peft", why)


def load_engine(kind: str = "auto", model: str = "", adapters_dir: str = "adapters", adapters: list[str] | None = None,
                url: str | None = None, handover: bool = False, **options) -> Engine:
    """Build the engine `kind` on `model` with the adapters found in `adapters_dir` (or only those named).
    `handover`: where auto chooses vLLM on a CPU, serve with PEFT until vLLM has started."""
    asked = kind
    kind, reason = choose_engine(kind)
    if kind != "remote":  # a model shorthand (clo.models.table) becomes its folder, made on first use
        from clo.models.table import resolve_model

        model = resolve_model(model)
    found = find_adapters(adapters_dir, adapters) if kind != "remote" else []
    if kind == "remote":
        from clo.engines.remote import RemoteEngine

        _say(kind, reason)
        if not url:
            raise CLOError("the remote engine needs the server's URL (--url http://host:8000)")
        from clo.hub import fetch_adapter, is_hub_adapter, served_name
        hub_specs = [s for s in adapters or [] if is_hub_adapter(s) and not (Path(adapters_dir) / s).is_dir()]
        served_once([served_name(s) for s in hub_specs])  # before the server is asked anything
        engine = RemoteEngine(url, model=model or None, **options)
        for spec in hub_specs:  # a hub repo: fetched here, loaded from the cache's folder (the server reads it)
            hub = fetch_adapter(spec)
            engine.add_adapter(hub.folder, hub.name, hub.source)
        return engine
    from clo.engines.peft_engine import PeftEngine

    if kind == "vllm":
        from clo.engines.vllm_engine import VLLMEngine, vllm_on_cpu

        if handover and asked == "auto" and vllm_on_cpu():
            from clo.engines.handover import Handover

            _say("peft", f"{reason}: peft serves until vllm has started in the background, then vllm takes over")
            return Handover(PeftEngine(model, found, **_accepted(PeftEngine, options)),
                            lambda served: VLLMEngine(model, served, **_accepted(VLLMEngine, options)), reason=reason)
        _say(kind, reason)
        return VLLMEngine(model, found, **options)
    _say(kind, reason)
    return PeftEngine(model, found, **options)


def _say(kind: str, reason: str) -> None:
    log.info("engine: %s (%s)", kind, reason)
    print(f"[clo] engine: {kind} ({reason})", flush=True)


def _accepted(engine: type, options: dict) -> dict:
    """The options an engine's constructor takes (the rest belong to the other engine of a handover)."""
    names = inspect.signature(engine.__init__).parameters
    return {k: v for k, v in options.items() if k in names}

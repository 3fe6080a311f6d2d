"""Serving the base model and its adapters side by side: one interface, three engines.

    from clo.engines import load_engine
    engine = load_engine("auto", model="Qwen/Qwen2.5-0.5B-Instruct", adapters_dir="adapters")

- vllm:   in-process vLLM with multi-LoRA (clo.engines.vllm_engine)
- remote: a `vllm serve --enable-lora` server's OpenAI-compatible API (clo.engines.remote)
- peft:   transformers + PEFT mixed-adapter batches (clo.engines.peft_engine), for CPUs and ZeroGPU
- auto:   vllm when it is importable and usable here, else peft; the choice and its reason are logged once
"""

from __future__ import annotations

import logging

from clo import CLOError
from clo.engines.base import BASE, Adapter, Answer, Engine, Request, Sampling, find_adapters, read_adapter

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
                url: str | None = None, **options) -> Engine:
    """Build the engine `kind` on `model` with the adapters found in `adapters_dir` (or only those named)."""
    kind, reason = choose_engine(kind)
    if kind != "remote":  # a model shorthand (clo.models.table) becomes its folder, made on first use
        from clo.models.table import resolve_model

        model = resolve_model(model)
    found = find_adapters(adapters_dir, adapters) if kind != "remote" else []
    log.info("engine: %s (%s)", kind, reason)
    print(f"[clo] engine: {kind} ({reason})", flush=True)
    if kind == "remote":
        from clo.engines.remote import RemoteEngine

        if not url:
            raise CLOError("the remote engine needs the server's URL (--url http://host:8000)")
        return RemoteEngine(url, model=model or None, **options)
    if kind == "vllm":
        from clo.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, found, **options)
    from clo.engines.peft_engine import PeftEngine

    return PeftEngine(model, found, **options)

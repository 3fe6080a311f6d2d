"""PEFT engine: the base model and every adapter in one process, every visitor's variants decoded together.

For CPUs and ZeroGPU Spaces, where vLLM cannot hold a GPU. Rows of a batch pick their adapter through
PEFT's mixed-adapter batches (`adapter_names=[...]`, "__base__" for the base model).

One scheduler thread owns the model (dynamic batching): `stream()` from any thread submits a job and reads its
own queue; jobs that arrive while a `generate` runs are gathered into the next one, up to `max_batch` rows of
the same sampling settings. A caller that stops reading cancels its rows: a stopping criterion ends them at the
next step (the whole `generate` ends when none is left). transformers' own continuous batching
(`init_continuous_batching` / `generate_batch`) is not used: its requests carry no adapter, and PEFT's
per-row `adapter_names` needs the padded batch layout that `generate` keeps.

The direct path (`generate_here` / `stream_here`) decodes one caller's requests itself, with the same batch step
(`_decode`) and so the same answers, without the scheduler thread: for ZeroGPU, whose `spaces.GPU` calls run in a
process forked from the app (clo.app.zerogpu), where that thread does not exist and `generate` would wait forever.
In a fork it takes no lock (one held by a parent thread at fork time is never released there) and refuses when
the engine's lock was held at fork time; in the engine's own process it takes the lock like the scheduler. It takes
requests its caller has checked (`check`): clo.app.zerogpu checks them in the parent, where a refusal costs no GPU time.

    engine = PeftEngine("models/tiny", find_adapters("adapters"))
    engine.generate([Request("base", msgs), Request("clo-ko", msgs)])
    engine.generate_here(requests)                  # decoded in this thread: what a spaces.GPU call runs
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
from typing import Iterator

import torch

from clo import CLOError
from clo.chat import chat_ids
from clo.config import ModelConfig
from clo.engines.base import BASE, Adapter, Answer, Engine, Job, Request, Sampling, fair_order


class _Batch:
    """One `generate` over the rows of several jobs: transformers calls `put` with each step's new tokens ([B]) and
    asks `__call__` (a stopping criterion) which rows are done, so a cancelled job stops within one step."""

    def __init__(self, engine: "PeftEngine", jobs: list[Job]):
        self.engine, self.jobs = engine, jobs
        self.rows = [(job, k) for job in jobs for k in range(len(job.requests))]
        self.ids: list[list[int]] = [[] for _ in self.rows]
        self.prompt_seen = False

    def alive(self) -> list[bool]:
        return [job.answers[k].finish_reason is None and not job.cancelled.is_set() for job, k in self.rows]

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        alive = self.alive()
        stats = self.engine.stats
        stats["steps"] += 1
        stats["max_rows"] = max(stats["max_rows"], sum(alive))
        tokenizer, eos = self.engine.tokenizer, self.engine.eos
        for i, token in enumerate(value.reshape(-1).tolist()):
            if not alive[i]:
                continue
            job, k = self.rows[i]
            a, sampling = job.answers[k], job.requests[k].sampling
            a.seconds, a.batch = job.elapsed(), max(a.batch, sum(alive))
            if token in eos:
                a.finish_reason = "stop"
                continue
            self.ids[i].append(token)
            # an incomplete multi-byte character at the end is not text yet (vLLM holds it back too)
            a.text, stopped = sampling.cut(tokenizer.decode(self.ids[i], skip_special_tokens=True).rstrip("\ufffd"))
            a.tokens = len(self.ids[i])
            if a.first_token_s is None:
                a.first_token_s = a.seconds
            if stopped:
                a.finish_reason = "stop"
            elif a.tokens >= sampling.max_tokens:
                a.finish_reason = "length"
        for job in self.jobs:
            if not job.cancelled.is_set():
                job.publish()

    def end(self) -> None:
        pass

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.tensor([not alive for alive in self.alive()], device=input_ids.device)


class PeftEngine(Engine):
    kind = "peft"

    def __init__(self, model: str, adapters: list[Adapter] = (), load_in_4bit: str = "false",
                 trust_remote_code: bool = False, revision: str | None = None, max_batch: int = 64,
                 gather_s: float = 0.01):
        from clo.load import load_base

        super().__init__(model)
        self.base, self.tokenizer, self.mode = load_base(
            ModelConfig(name_or_path=model, revision=revision, load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code),
            verbose=False,
        )
        self.base.eval()
        self.tokenizer.padding_side = "left"
        self.peft = None
        self.lock = threading.Lock()  # held by each generate and each adapter load: they never overlap
        self.pid = os.getpid()  # the process whose threads take `lock` (a forked child takes none: _lock_here)
        eos = self.base.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.context = getattr(self.base.config, "max_position_embeddings", None)
        for adapter in adapters:
            self.check_adapter(adapter)
            self._load(adapter)
            self.adapters[adapter.name] = adapter
        self.max_batch, self.gather_s = max_batch, gather_s  # rows per generate; how long a lone job waits for company
        self.stats = {"steps": 0, "max_rows": 0, "generates": 0}  # decoding steps, most rows in one, generate calls
        self.current: _Batch | None = None
        self.waiting: list[Job] = []  # taken from the inbox, not yet decoded
        self.last_served: dict[str, int] = {}  # owner waiting or just served -> the generate that last served it
        self.inbox: queue.Queue[Job] = queue.Queue()
        self.worker = threading.Thread(target=self._serve, name="clo-peft-scheduler", daemon=True)
        self.worker.start()

    def _load(self, adapter: Adapter) -> None:
        from peft import PeftModel

        check_fits(adapter, self.base, self.model)  # before PEFT changes any layer
        with self.lock:
            try:
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(self.base, str(adapter.path), adapter_name=adapter.name)
                else:
                    if adapter.name in self.peft.peft_config:
                        self.peft.delete_adapter(adapter.name)
                        self.adapters.pop(adapter.name, None)  # gone until the new one is in
                    self.peft.load_adapter(str(adapter.path), adapter_name=adapter.name)
            except CLOError:
                raise
            except Exception as e:  # noqa: BLE001 (PEFT's dump becomes one sentence; the engine serves on without it)
                self._undo(adapter.name)
                raise CLOError(load_failure(adapter, e, self.model)) from None
            self.peft.eval()

    def _undo(self, name: str) -> None:
        """Take out what a failed load put in: its adapter, or the LoRA layers injected into the bare base."""
        if self.peft is not None:
            if name in self.peft.peft_config:
                with contextlib.suppress(Exception):
                    self.peft.delete_adapter(name)
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for path, module in list(self.base.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent, _, child = path.rpartition(".")
                setattr(self.base.get_submodule(parent), child, module.get_base_layer())

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat's token ids, generation prompt included; a visitor's text stays text (clo.chat)."""
        return chat_ids(self.tokenizer, messages)

    # ---- serving: one scheduler thread owns the model; callers submit jobs and read their own queue ----
    def check(self, requests: list[Request]) -> None:
        """Engine.check, and each prompt with its max_tokens within the model's context: a prompt that cannot fit
        fails here, alone, before it joins anyone's batch (or, on ZeroGPU, before any GPU time is asked for)."""
        super().check(requests)
        for r in requests:
            self._check_length(self.prompt_ids(r.messages), r.sampling.max_tokens)

    def stream(self, requests: list[Request]) -> Iterator[list[Answer]]:
        self.check(requests)
        groups: dict[tuple, list[int]] = {}  # one generate has one sampling setting: a job per setting
        for i, r in enumerate(requests):
            groups.setdefault(_sampling_key(r.sampling), []).append(i)
        if len(groups) == 1:
            job = Job(requests)
            self.inbox.put(job)
            return job.results()
        groups = list(groups.values())
        jobs = [Job([requests[i] for i in rows]) for rows in groups]
        for job in jobs:  # queued now, not when the caller starts reading (clo.engines.handover counts on it)
            self.inbox.put(job)
        return self._stream_groups(requests, jobs, groups)

    def _stream_groups(self, requests: list[Request], jobs: list[Job], groups: list[list[int]]) -> Iterator[list[Answer]]:
        try:
            yield from _collect(requests, list(zip(jobs, groups)))
        finally:
            for job in jobs:
                job.cancelled.set()

    def _check_length(self, ids: list[int], max_tokens: int) -> None:
        n = len(ids)
        if self.context and n + max_tokens > self.context:
            raise CLOError(f"prompt of {n} tokens + {max_tokens} new tokens exceeds the model's context of {self.context} "
                           "tokens: shorten the prompt or lower max_tokens")

    def _serve(self) -> None:
        """Forever: gather the jobs waiting (up to max_batch rows of one sampling setting), decode them in one
        `generate`, repeat. Jobs that arrive meanwhile wait for the next one (dynamic batching). The waiting jobs
        are taken owners in turn (base.fair_order), so one address's backlog never pushes another visitor back."""
        while True:
            if not self.waiting:
                job = self.inbox.get()
                if job is None:  # close()
                    return
                self.waiting.append(job)
                time.sleep(self.gather_s)  # callers that come a moment later share this generate
            while True:
                try:
                    job = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    return
                self.waiting.append(job)
            self.waiting = [j for j in self.waiting if not j.cancelled.is_set()]
            if not self.waiting:
                continue
            turns = fair_order(self.waiting, self.last_served)
            key = _sampling_key(turns[0].requests[0].sampling)
            batch, rows = [], 0
            for job in turns:  # a job's requests share one setting (stream splits them)
                if _sampling_key(job.requests[0].sampling) == key and (not batch or rows + len(job.requests) <= self.max_batch):
                    batch.append(job)
                    rows += len(job.requests)
            self.waiting = [j for j in self.waiting if j not in batch]  # the rest keep their arrival order
            keep = {j.owner for j in self.waiting + batch}  # an owner neither waiting nor served now is forgotten
            self.last_served = {o: n for o, n in self.last_served.items() if o in keep}
            self.last_served.update((j.owner, self.stats["generates"]) for j in batch)
            self._run(batch)

    def close(self) -> None:
        """Stop the scheduler thread once the jobs already running are done."""
        self.inbox.put(None)
        self.worker.join(timeout=60)

    def unfinished(self) -> int:
        """Rows still decoding in the running generate plus rows waiting for the next one."""
        current = self.current
        running = sum(current.alive()) if current is not None else 0
        queued = [j for j in list(self.inbox.queue) + list(self.waiting) if j is not None]
        return running + sum(len(j.requests) for j in queued if not j.cancelled.is_set())

    def _run(self, jobs: list[Job]) -> None:
        step = self.current = _Batch(self, jobs)
        try:
            self._decode(step, self.lock)
        finally:
            self.current = None

    def _decode(self, step: _Batch, lock) -> None:
        """One `generate` over the rows of `step` with `lock` held, then each job finished (or failed with a clear
        error): the one batch-decoding step of the scheduler thread and of the direct path."""
        jobs = step.jobs
        requests = [job.requests[k] for job, k in step.rows]
        sampling: Sampling = requests[0].sampling
        try:
            enc = self.tokenizer.pad({"input_ids": [self.prompt_ids(r.messages) for r in requests]}, padding=True,
                                     return_tensors="pt").to(self.base.device)
            kwargs = dict(**enc, max_new_tokens=max(r.sampling.max_tokens for r in requests),
                          do_sample=sampling.temperature > 0, pad_token_id=self.tokenizer.pad_token_id,
                          eos_token_id=sorted(self.eos), streamer=step, stopping_criteria=[step])
            if sampling.repetition_penalty != 1.0:
                kwargs["repetition_penalty"] = sampling.repetition_penalty
            if sampling.temperature > 0:
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with lock, torch.no_grad():
                model = self.base
                if self.peft is not None:
                    model = self.peft
                    kwargs["adapter_names"] = ["__base__" if r.variant == BASE else r.variant for r in requests]
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                self.stats["generates"] += 1
                model.generate(**kwargs)
        except Exception as e:  # noqa: BLE001 (the jobs of this batch fail with a clear error; the loop serves on)
            for job in jobs:
                job.fail(e)
            return
        for job in jobs:
            job.finish()

    # ---- the direct path: decoded by the caller, no scheduler thread (ZeroGPU's forked spaces.GPU calls) ----
    def generate_here(self, requests: list[Request]) -> list[Answer]:
        """`generate` decoded in the calling thread: one `generate` per sampling setting, all of this call's requests
        batched together and never with another caller's. What a `spaces.GPU` call runs in its forked
        process, where the scheduler thread does not exist, on requests the parent has checked (`check`)."""
        jobs, lock = self._jobs_here(requests), self._lock_here()
        for job, _ in jobs:
            self._decode(_Batch(self, [job]), lock)
        final = None
        for final in _collect(requests, jobs):
            pass
        return final

    def stream_here(self, requests: list[Request]) -> Iterator[list[Answer]]:
        """`stream` decoded in this process: a thread started here runs the same batches as `generate_here` while
        the caller reads the snapshots; closing the generator cancels the rows and waits for that thread, so the
        next call never meets a `generate` still running."""
        jobs, lock = self._jobs_here(requests), self._lock_here()

        def decode():
            for job, _ in jobs:
                if not job.cancelled.is_set():
                    self._decode(_Batch(self, [job]), lock)

        worker = threading.Thread(target=decode, name="clo-peft-direct", daemon=True)
        worker.start()
        try:
            yield from _collect(requests, jobs)
        finally:
            for job, _ in jobs:
                job.cancelled.set()
            worker.join()

    def catch_up(self, adapters: dict[str, Adapter]) -> None:
        """Load each of `adapters` (name -> adapter, as another copy of this engine serves it) that this copy lacks
        or holds in another version: a spaces.GPU worker forked before an adapter was (re)loaded in the parent."""
        for name, adapter in adapters.items():
            if self.adapters.get(name) != adapter:
                self._lock_here()  # refuses where a load could wait forever on a lock copied held into this fork
                self.check_adapter(adapter)
                self._load(adapter)
                self.adapters[name] = adapter

    def _jobs_here(self, requests: list[Request]) -> list[tuple[Job, list[int]]]:
        """`requests`, already checked by the caller (`check`), split as `stream` splits them: a job per sampling
        setting (one `generate` each, as the scheduler runs a job whole), each with the indices of its requests."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(_sampling_key(r.sampling), []).append(i)
        return [(Job([requests[i] for i in rows]), rows) for rows in groups.values()]

    def _lock_here(self):
        """The lock the direct path decodes under. In the process that built the engine it is `self.lock`, so a
        direct call never overlaps the scheduler's `generate` or an adapter load. In a forked child (spaces.GPU) no
        other thread uses the model, and `self.lock` may never be released there: a thread of the parent that held
        it at fork time does not exist in the child. So the child takes no lock, and refuses outright when the lock
        was held at fork time, since the model may be half-way through an adapter load or a `generate` whose PEFT
        hooks are still attached (spaces then forks a fresh worker for the next call)."""
        if os.getpid() == self.pid:
            return self.lock
        if self.lock.locked():
            raise CLOError("the GPU worker was forked while the server was loading an adapter or decoding, so its copy "
                           "of the model may be half-changed: try again")
        return contextlib.nullcontext()


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<layer>.+)\.lora_(?P<part>A|B|embedding_A|embedding_B)(?:\.weight)?$")


def check_fits(adapter: Adapter, model, model_name: str) -> None:
    """Refuse, in one sentence, an adapter whose LoRA weights do not fit `model`'s layers: a layer it lacks, or another
    width (an adapter trained for another base model, whatever its manifest says). Reads only the weights' header."""
    from safetensors import safe_open

    modules = dict(model.named_modules())
    with safe_open(str(adapter.path / "adapter_model.safetensors"), framework="numpy") as f:
        for key in f.keys():
            m = _LORA_KEY.match(key)
            if not m:
                continue
            layer, part, shape = m["layer"], m["part"], list(f.get_slice(key).get_shape())
            module = modules.get(layer)
            if module is None:
                raise CLOError(f"adapter {adapter.path} has weights for layer {layer}, which {model_name} does not have: "
                               "it was trained for another base model; serve it with that model, or retrain it on this one")
            if part.startswith("embedding"):
                size_in, size_out = getattr(module, "num_embeddings", None), getattr(module, "embedding_dim", None)
            else:
                size_in, size_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
            if not isinstance(size_in, int) or not isinstance(size_out, int) or len(shape) != 2:
                continue  # a layer kind without these sizes: left to PEFT
            want = [shape[0], size_in] if part.endswith("A") else [size_out, shape[1]]
            if shape != want:
                raise CLOError(f"adapter {adapter.path} does not fit {model_name}: its lora_{part} for layer {layer} has "
                               f"shape {shape}, the base model needs {want}, so it was trained for another base model; "
                               "serve it with that model, or retrain it on this one")


def load_failure(adapter: Adapter, error: BaseException, model_name: str) -> str:
    """PEFT's failure to load `adapter` as one sentence (a size mismatch names the layer and both shapes)."""
    text = str(error)
    m = re.search(r"size mismatch for (\S+?):.*?shape torch\.Size\(\[([\d, ]*)\]\).*?shape in current model is "
                  r"torch\.Size\(\[([\d, ]*)\]\)", text)
    if m:
        return (f"adapter {adapter.path} does not fit {model_name}: {m[1]} has shape [{m[2]}], the base model needs "
                f"[{m[3]}], so it was trained for another base model; serve it with that model, or retrain it on this one")
    reason = " ".join(text.split())[:300] or type(error).__name__
    return f"cannot load adapter {adapter.path} into {model_name}: {reason}"


def _collect(requests: list[Request], jobs: list[tuple[Job, list[int]]]) -> Iterator[list[Answer]]:
    """The jobs' snapshots as snapshots of all `requests`, in request order (a failed job raises its error)."""
    answers = [Answer(r.variant) for r in requests]
    for job, rows in jobs:
        for snapshot in job.results():
            for i, a in zip(rows, snapshot):
                answers[i] = a
            yield list(answers)


def _sampling_key(s: Sampling) -> tuple:
    """Requests decode together only with the same sampling settings (one `generate` has one)."""
    return (s.temperature, s.top_p, s.seed, s.repetition_penalty)

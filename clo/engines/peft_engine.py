"""PEFT engine: the base model and every adapter in one process, all variants decoded in ONE `generate`.

For CPUs and ZeroGPU Spaces, where vLLM cannot hold a GPU. Rows of a batch pick their adapter through
PEFT's mixed-adapter batches (`adapter_names=[...]`, "__base__" for the base model).

    engine = PeftEngine("models/tiny", find_adapters("adapters"))
    engine.generate([Request("base", msgs), Request("clo-ko", msgs)])
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import torch

from clo import CLOError
from clo.config import ModelConfig
from clo.engines.base import BASE, Adapter, Answer, Engine, Request, Sampling


class _BatchStreamer:
    """Receives each step's new tokens ([B]) from `generate` and queues them (transformers' streamer protocol)."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)


class PeftEngine(Engine):
    kind = "peft"

    def __init__(self, model: str, adapters: list[Adapter] = (), load_in_4bit: str = "false",
                 trust_remote_code: bool = False, revision: str | None = None):
        from clo.models import load_base

        super().__init__(model)
        self.base, self.tokenizer, self.mode = load_base(
            ModelConfig(name_or_path=model, revision=revision, load_in_4bit=load_in_4bit, trust_remote_code=trust_remote_code),
            verbose=False,
        )
        self.base.eval()
        self.tokenizer.padding_side = "left"
        self.peft = None
        self.lock = threading.Lock()  # one generate at a time: adapters are swapped on the shared model
        eos = self.base.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.context = getattr(self.base.config, "max_position_embeddings", None)
        for adapter in adapters:
            self.check_adapter(adapter)
            self._load(adapter)
            self.adapters[adapter.name] = adapter

    def _load(self, adapter: Adapter) -> None:
        from peft import PeftModel

        with self.lock:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, str(adapter.path), adapter_name=adapter.name)
            else:
                if adapter.name in self.peft.peft_config:
                    self.peft.delete_adapter(adapter.name)
                self.peft.load_adapter(str(adapter.path), adapter_name=adapter.name)
            self.peft.eval()

    def render(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def stream(self, requests: list[Request]) -> Iterator[list[Answer]]:
        self.check(requests)
        groups: dict[tuple, list[int]] = {}  # requests sharing temperature/top_p/seed decode together
        for i, r in enumerate(requests):
            groups.setdefault((r.sampling.temperature, r.sampling.top_p, r.sampling.seed), []).append(i)
        answers = [Answer(r.variant) for r in requests]
        for rows in groups.values():
            for _ in self._stream_group([requests[i] for i in rows], [answers[i] for i in rows]):
                yield [Answer(**vars(a)) for a in answers]

    def _stream_group(self, requests: list[Request], answers: list[Answer]) -> Iterator[None]:
        sampling: Sampling = requests[0].sampling
        enc = self.tokenizer([self.render(r.messages) for r in requests], return_tensors="pt", padding=True,
                             add_special_tokens=False).to(self.base.device)
        longest = int(enc["attention_mask"].sum(-1).max())
        budget = max(r.sampling.max_tokens for r in requests)
        if self.context and longest + budget > self.context:
            raise CLOError(f"prompt of {longest} tokens + {budget} new tokens exceeds the model's context of {self.context} "
                           "tokens: shorten the prompt or lower max_tokens")
        kwargs = dict(**enc, max_new_tokens=budget, do_sample=sampling.temperature > 0,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos))
        if sampling.temperature > 0:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        model = self.base
        if self.peft is not None:
            model = self.peft
            kwargs["adapter_names"] = ["__base__" if r.variant == BASE else r.variant for r in requests]
        streamer = _BatchStreamer()
        kwargs["streamer"] = streamer
        ids: list[list[int]] = [[] for _ in requests]
        failure: list[BaseException] = []

        def run():
            try:
                with self.lock, torch.no_grad():
                    if sampling.seed is not None:
                        torch.manual_seed(sampling.seed)
                    model.generate(**kwargs)
            except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
                failure.append(e)
                streamer.end()

        started = time.perf_counter()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        while (step := streamer.queue.get()) is not None:
            now = time.perf_counter() - started
            for i, token in enumerate(step):
                a, limit = answers[i], requests[i].sampling.max_tokens
                if a.finish_reason is not None:
                    continue
                if token in self.eos:
                    a.finish_reason = "stop"
                else:
                    ids[i].append(token)
                    # an incomplete multi-byte character at the end is not text yet (vLLM holds it back too)
                    a.text = self.tokenizer.decode(ids[i], skip_special_tokens=True).rstrip("\ufffd")
                    a.tokens = len(ids[i])
                    if a.tokens >= limit:
                        a.finish_reason = "length"
                a.seconds = now
            yield
        thread.join()
        if failure:
            raise failure[0]
        for a in answers:
            a.finish_reason = a.finish_reason or "length"
        yield

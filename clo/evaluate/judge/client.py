"""The LLM judge's HTTP client: one pairwise judge behind any OpenAI-compatible `/v1/chat/completions`.

    client = JudgeClient("http://127.0.0.1:8001", "Qwen/Qwen2.5-72B-Instruct")   # health check, constraint chosen
    verdict = client.ask(prompt, first_answer, second_answer)                     # Verdict(winner=0 | 1 | None, ...)
    client.close()

The health check asks /v1/models: the server must serve the model, and "auto" picks the constraint (clo.evaluate.judge.
protocol): "choice" when the server is vLLM (structured outputs, `{"structured_outputs": {"choice": ["A", "B"]}}`),
else "logprobs". One pooled HTTP client serves every thread. A refused connection, HTTP 429 or 5xx is re-sent up to
`retries` times (0.5 s, 1 s, ...); a timeout is not. A transport failure raises JudgeError with one sentence, and
the run that asked stops (clo.evaluate.judge.run). The API key, when the endpoint needs one, is read from
CLO_JUDGE_API_KEY (never from OPENAI_API_KEY: that key must not go to whatever URL is given).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import httpx

from clo import CLOError
from clo.evaluate.judge.protocol import CONSTRAINTS, PAIRWISE, Protocol

API_KEY_VARIABLE = "CLO_JUDGE_API_KEY"


@dataclass
class Verdict:
    """The judge's reply to one pair: winner 0 (the first shown), 1 (the second) or None (unreadable)."""

    winner: int | None
    reply: str  # what was read: the label, with its probability when log-probabilities came back
    tokens: int = 0  # prompt + completion tokens, as the server counted them (0 when it did not say)
    seconds: float = 0.0


class JudgeError(CLOError):
    """The judge could not be asked (unreachable, an HTTP error, no answer in time): the run stops."""


class JudgeClient:
    """A pairwise judge behind an OpenAI-compatible `/v1/chat/completions`, one pooled HTTP client for all threads.

    constraint: "choice" (vLLM structured outputs: the reply is one of the labels), "logprobs" (one token, the
    labels' log-probabilities compared), "none" (free text that must be a label), or "auto": "choice" when the
    server is vLLM (its /v1/models says `owned_by: vllm`), else "logprobs".
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, constraint: str = "auto",
                 timeout: float = 60.0, concurrency: int = 16, retries: int = 2, protocol: Protocol = PAIRWISE):
        if constraint not in CONSTRAINTS:
            raise CLOError(f"unknown judge constraint {constraint!r}; choose from {', '.join(CONSTRAINTS)}")
        if not model or not model.strip():
            raise CLOError("name the judge's model (--judge-model NAME, as its server lists it in /v1/models)")
        if not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise CLOError(f"the judge timeout must be a positive number of seconds, got {timeout!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise CLOError(f"judgments in flight must be a whole number ≥ 1, got {concurrency!r}")
        self.url = _base_url(url)
        self.model, self.timeout, self.concurrency, self.retries, self.protocol = model, timeout, concurrency, retries, protocol
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
                                 limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        self.constraint = self._check(constraint)

    def _check(self, constraint: str) -> str:
        """Health check: the server answers /v1/models and serves the model; returns the constraint to use."""
        body = self._request("GET", "/v1/models")
        models = body.get("data") if isinstance(body, dict) else None
        if not isinstance(models, list):
            raise JudgeError(f"the judge server at {self.url} answered /v1/models with {excerpt(json.dumps(body))}, "
                             "not a model list: is it an OpenAI-compatible server?")
        served = {m.get("id"): m for m in models if isinstance(m, dict)}
        if self.model not in served:
            raise CLOError(f"the judge server at {self.url} does not serve {self.model!r}; it serves "
                           f"{', '.join(map(str, served)) or 'nothing'}: fix --judge-model")
        if constraint == "auto":
            return "choice" if served[self.model].get("owned_by") == "vllm" else "logprobs"
        return constraint

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        """One request, re-sent up to `retries` times on a refused connection, HTTP 429 or 5xx (0.5 s, 1 s, ...);
        a timeout is not re-sent. Raises JudgeError with one sentence."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.http.request(method, path, json=payload)
            except httpx.TimeoutException:
                raise JudgeError(f"the judge at {self.url} did not answer within {self.timeout:g} s: raise "
                                 "--judge-timeout, or lower --concurrency") from None
            except httpx.TransportError as e:
                if not last:
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise JudgeError(f"the judge server at {self.url} is unreachable ({_reason(e)}): start it, or fix "
                                 "--judge-url") from None
            if response.status_code >= 400:
                if not last and (response.status_code == 429 or response.status_code >= 500):
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise JudgeError(f"the judge at {self.url} answered HTTP {response.status_code}: "
                                 f"{_server_message(response)}")
            try:
                return response.json()
            except ValueError:
                raise JudgeError(f"the judge at {self.url} sent {excerpt(response.text)}, which is not JSON") from None
        raise AssertionError("unreachable")

    def ask(self, instruction: str, first: str, second: str) -> Verdict:
        """Which of two answers is better; the first is shown as the first label."""
        started = time.perf_counter()
        payload = {"model": self.model, "messages": self.protocol.messages(instruction, first, second),
                   "temperature": 0.0}
        labels = list(self.protocol.labels)
        if self.constraint == "choice":
            payload.update(max_tokens=8, logprobs=True, top_logprobs=2, structured_outputs={"choice": labels})
        elif self.constraint == "logprobs":
            payload.update(max_tokens=1, logprobs=True, top_logprobs=20)
        else:
            payload.update(max_tokens=8)
        body = self._request("POST", "/v1/chat/completions", payload)
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"the judge at {self.url} sent {excerpt(json.dumps(body))}, not a chat completion") from None
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        tokens = int(usage.get("total_tokens") or 0)
        winner, reply = self.protocol.read(text, _first_logprobs(choice), self.constraint)
        return Verdict(winner, reply, tokens, time.perf_counter() - started)

    def close(self) -> None:
        self.http.close()


def _base_url(url: str) -> str:
    if not url or not url.startswith(("http://", "https://")):
        raise CLOError(f"the judge URL must start with http:// or https://, got {url!r}")
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:160]


def excerpt(text: str, limit: int = 100) -> str:
    """`text` on one line, quoted, at most `limit` characters (the judge's messages quote what came back this way)."""
    folded = " ".join(str(text).split())
    return "an empty body" if not folded else repr(folded[:limit] + ("…" if len(folded) > limit else ""))


def _server_message(response: httpx.Response) -> str:
    """The message of an OpenAI-style error body, else an excerpt of what was sent."""
    try:
        body = response.json()
    except ValueError:
        return excerpt(response.text)
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message") if isinstance(error, dict) else error
    return excerpt(str(message if message else body))


def _first_logprobs(choice: dict) -> list[dict]:
    try:
        content = choice["logprobs"]["content"]
        return content[0].get("top_logprobs") or [] if content else []
    except (KeyError, TypeError, IndexError, AttributeError):
        return []


"""The remote engine against servers that misbehave: small real HTTP servers on loopback, one per test.

Each server speaks enough of vLLM's OpenAI API (/health, /v1/models, streamed /v1/chat/completions) to start an
engine; the request's `model` picks how it answers. The base model always answers well, so every batch checks
that the bad request ends alone, with one sentence naming the server and quoting what it sent, while the others
finish with their text, and that the call returns within a bound.

    python -m pytest -q tests/test_bad_servers.py
"""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clo import CLOError
from clo.engines import BASE, Request, Sampling
from clo.engines.remote import RemoteEngine, excerpt

GOOD = ["Hello", " world", "!"]  # what the base model (and the adapter "good") always answers
BAD = ("garbage", "drop", "close", "stall", "mute", "error-mid", "no-choices", "wrong-types", "html-500", "json-400",
       "html-200")
READ_TIMEOUT = 1.0  # the engine's read timeout in these tests; "stall" and "mute" stay silent for 4 s
HTML_502 = ("<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title><style>body{color:red}</style></head>\n"
            "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx/1.25</center></body></html>\n")


def chunk(content: str | None = None, finish: str | None = None) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "tiny",
            "choices": [{"index": 0, "delta": {"content": content} if content is not None else {},
                         "finish_reason": finish}]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked streams, as uvicorn sends them

    def log_message(self, *args):  # quiet
        pass

    # ---- plain replies (each closes its connection, so no pooled connection outlives the server) ----
    def reply(self, status: int, body: str, kind: str = "application/json") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, "")
        if self.path == "/v1/models":
            if self.server.models_reply is not None:
                return self.reply(200, *self.server.models_reply)
            models = [{"id": "tiny", "object": "model", "root": "tiny", "parent": None}]
            models += [{"id": n, "object": "model", "root": f"/adapters/{n}", "parent": "tiny"} for n in ("good", "late-drop", *BAD)]
            return self.reply(200, json.dumps({"object": "list", "data": models}))
        self.reply(404, json.dumps({"detail": "Not Found"}))

    # ---- the stream ----
    def start_stream(self, chunked: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")  # the body ends when the connection does
        self.end_headers()
        self.chunked = chunked

    def send(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        self.wfile.flush()

    def event(self, obj) -> None:
        self.send(f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n")
        time.sleep(0.05)  # a token at a time, so the batch's streams overlap

    def end(self) -> None:
        self.event(chunk(finish="stop"))
        self.event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": len(GOOD), "total_tokens": 5 + len(GOOD)}})
        self.send("data: [DONE]\n\n")
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        with self.server.lock:
            self.server.posts[model] = self.server.posts.get(model, 0) + 1
        if model == "mute":  # not even the headers
            self.server.release.wait(4 * READ_TIMEOUT)
            self.close_connection = True
            return
        if model == "html-500":
            return self.reply(500, HTML_502.replace("502 Bad Gateway", "500 Internal Server Error"), "text/html")
        if model == "json-400":
            return self.reply(400, json.dumps({"object": "error", "message": "max_tokens is too large for this model",
                                               "type": "BadRequestError", "param": None, "code": 400}))
        if model == "html-200":
            return self.reply(200, HTML_502, "text/html; charset=utf-8")
        self.start_stream(chunked=model != "close")
        for word in GOOD[:2]:
            self.event(chunk(word))
        if model in ("tiny", "good"):
            self.event(chunk(GOOD[2]))
            return self.end()
        if model == "late-drop":  # the answer is whole; only the usage chunk and [DONE] are lost
            self.event(chunk(GOOD[2]))
            self.event(chunk(finish="stop"))
            self.close_connection = True
            return self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True
        if model == "garbage":
            self.event("<html>upstream \x1b[31mhiccup</html>")
        elif model == "error-mid":
            self.event({"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}})
        elif model == "no-choices":
            self.event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "result": "Hi"})
        elif model == "wrong-types":
            self.event({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": 42}}]})
        elif model == "stall":
            self.server.release.wait(4 * READ_TIMEOUT)
            return
        # drop, close: the connection ends here, with no [DONE] (chunked: mid-body; "close": a clean EOF)
        self.connection.shutdown(socket.SHUT_RDWR)


class Server(ThreadingHTTPServer):
    """The handler's state: what /v1/models answers (None: a good list), POSTs per model, the stall's release."""

    daemon_threads = True

    def __init__(self, port: int = 0):
        super().__init__(("127.0.0.1", port), Handler)
        self.models_reply, self.posts, self.lock, self.release = None, {}, threading.Lock(), threading.Event()

    def handle_error(self, request, client_address):  # a client that hung up on a stalled stream: expected
        pass


@pytest.fixture
def server():
    srv = Server()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def ask(variants, max_tokens=16):
    return [Request(v, [{"role": "user", "content": "Hi?"}], Sampling(max_tokens=max_tokens)) for v in variants]


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_good_server_answers(server):
    engine = RemoteEngine(server.url, timeout=READ_TIMEOUT)
    assert set(engine.variants()) == {BASE, "good", "late-drop", *BAD}
    answers = engine.generate(ask([BASE, "good"]))
    assert [(a.text, a.tokens, a.finish_reason) for a in answers] == [("Hello world!", 3, "stop")] * 2


def test_connection_lost_after_the_last_token_loses_nothing(server):
    engine = RemoteEngine(server.url, timeout=READ_TIMEOUT)
    (answer,) = engine.generate(ask(["late-drop"]))
    assert (answer.text, answer.finish_reason, getattr(answer, "error", None)) == ("Hello world!", "stop", None)


EXPECTED = {  # what each bad request's sentence says, after "<variant>: the server at <url> "
    "garbage": ["sent a stream line that is not JSON", r"an HTML page: 'upstream \x1b[31mhiccup'"],
    "error-mid": ["reported an error mid-answer", "'CUDA out of memory'"],
    "no-choices": ["is not a chat-completion chunk", '"result": "Hi"'],
    "wrong-types": ["is not a chat-completion chunk", '"content": 42'],
    "drop": ["closed the connection mid-answer", "RemoteProtocolError", "incomplete chunked read"],
    "close": ["ended the stream before the answer was finished"],
    "stall": [f"sent nothing for {READ_TIMEOUT:g} s (read timeout)"],
    "mute": [f"sent nothing for {READ_TIMEOUT:g} s (read timeout)"],
    "html-500": ["answered HTTP 500", "an HTML page: '500 Internal Server Error nginx/1.25'"],
    "json-400": ["answered HTTP 400", "'max_tokens is too large for this model'"],
    "html-200": ["answered with text/html instead of an event stream", "an HTML page: '502 Bad Gateway nginx/1.25'"],
}


@pytest.mark.parametrize("bad", BAD)
def test_bad_request_ends_alone(server, bad):
    engine = RemoteEngine(server.url, timeout=READ_TIMEOUT)
    answers, seconds = timed(lambda: engine.generate(ask([BASE, bad, "good"])))
    assert seconds < READ_TIMEOUT + 3
    base, failed, good = answers
    assert (base.text, base.finish_reason) == ("Hello world!", "stop")
    assert (good.text, good.finish_reason) == ("Hello world!", "stop")
    assert failed.finish_reason == "error"
    message = failed.error
    assert message.startswith(f"{bad}: the server at {server.url} "), message
    for part in EXPECTED[bad]:
        assert part in message, message
    assert message.count(". ") == 0 and "\n" not in message and "Traceback" not in message  # one sentence
    assert server.posts[bad] == 1  # never re-sent


def test_every_fault_in_one_batch(server):
    engine = RemoteEngine(server.url, timeout=READ_TIMEOUT)
    variants = [BASE, *BAD, "good"]
    answers, seconds = timed(lambda: engine.generate(ask(variants)))
    assert seconds < READ_TIMEOUT + 3
    assert [a.variant for a in answers] == variants
    assert [a.text for a in (answers[0], answers[-1])] == ["Hello world!"] * 2
    for a in answers[1:-1]:
        assert a.finish_reason == "error" and all(part in a.error for part in EXPECTED[a.variant]), a.error


def test_stream_shows_the_failure_while_others_go_on(server):
    engine = RemoteEngine(server.url, timeout=READ_TIMEOUT)
    snapshots = list(engine.stream(ask(["garbage", BASE])))
    failed_at = next(k for k, s in enumerate(snapshots) if s[0].finish_reason == "error")
    assert snapshots[failed_at][1].finish_reason is None  # the base answer was still streaming
    assert snapshots[-1][1].text == "Hello world!" and "not JSON" in snapshots[-1][0].error


def test_every_request_failing_raises_one_sentence(server):
    engine = RemoteEngine(server.url, timeout=READ_TIMEOUT)
    with pytest.raises(CLOError, match=r"^html-500: the server at .* answered HTTP 500 \(an HTML page"):
        engine.generate(ask(["html-500"]))
    with pytest.raises(CLOError, match=r"and 1 more requests failed"):
        engine.generate(ask(["drop", "garbage"]))


def test_a_caller_who_leaves_a_stalled_stream_returns_at_once(server):
    engine = RemoteEngine(server.url, timeout=30)
    stream = engine.stream(ask(["stall"]))
    first, seconds = timed(lambda: next(stream))
    assert first[0].text == "Hello" and seconds < 2
    _, seconds = timed(stream.close)
    assert seconds < 0.5


@pytest.mark.parametrize("reply, shown", [
    ((HTML_502, "text/html"), "an HTML page: '502 Bad Gateway nginx/1.25'"),
    (("models: tiny\n", "text/plain"), "'models: tiny'"),
    (('{"object": "list", "models": ["tiny"]}', "application/json"), """'{"object": "list", "models": ["tiny"]}'"""),
    (('{"data": [{"name": "tiny"}]}', "application/json"), """'{"data": [{"name": "tiny"}]}'"""),
])
def test_models_that_are_not_a_model_list(server, reply, shown):
    server.models_reply = reply
    with pytest.raises(CLOError) as e:
        RemoteEngine(server.url, timeout=READ_TIMEOUT)
    assert str(e.value) == (f"GET {server.url}/v1/models sent {shown} instead of a model list "
                            "(is --url a vLLM server's OpenAI API?)")


def test_server_gone_after_start_is_retried_then_reported(server):
    engine = RemoteEngine(server.url, timeout=READ_TIMEOUT, health_timeout=1)
    server.shutdown()
    server.server_close()
    started = time.monotonic()
    with pytest.raises(CLOError, match=rf"the server at {server.url} is unreachable \(ConnectError, tried 3 times\)"):
        engine.generate(ask([BASE]))
    assert time.monotonic() - started < 3  # two short waits between the tries


def test_a_connection_refused_at_first_is_retried(server):
    engine = RemoteEngine(server.url, timeout=READ_TIMEOUT)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    again = {}

    def restart():  # the same port, a moment later (a server restarting)
        srv = Server(port)
        again["server"] = srv
        srv.serve_forever()

    threading.Timer(0.1, restart).start()
    try:
        answers, seconds = timed(lambda: engine.generate(ask([BASE])))
        assert answers[0].text == "Hello world!" and seconds >= 0.25  # refused once, tried again after 0.25 s
        assert again["server"].posts == {"tiny": 1}
    finally:
        if "server" in again:
            again["server"].shutdown()
            again["server"].server_close()


def test_excerpt_is_short_and_printable():
    assert excerpt("") == "an empty body"
    assert excerpt("a\n\tb\x00" + "x" * 500) == repr("a b\x00" + "x" * 96 + "…")
    assert excerpt(b"\xff\xfe oops") == repr("\ufffd\ufffd oops")
    assert excerpt("<html><head><title>Oops</title></head><body></body></html>") == "an HTML page: 'Oops'"


def test_a_battle_is_never_made_of_a_failed_answer(server, tmp_path):
    """The Arena stores a battle only when both answers are whole: a server failing one of them stores nothing."""
    import sqlite3
    from types import SimpleNamespace

    from clo import CLOError
    from clo.evaluate.langid import detect
    from clo.evaluate.arena import new_battle
    from clo.evaluate.store import open_store

    engine = RemoteEngine(server.url, timeout=READ_TIMEOUT)
    store = open_store(str(tmp_path / "votes.db"))
    services = SimpleNamespace(  # the parts of clo.app.context.Services that new_battle uses
        check_lang=lambda lang: lang, examples={}, battle_variants=lambda lang: ["good", "garbage"],
        check_prompt=lambda text: text, store=store, engine=engine, english_of=lambda *a: None,
        generate=engine.generate, stream=engine.stream, requests=lambda text, variants, owner=None: ask(variants),
        detect=detect)
    battles = lambda: sqlite3.connect(tmp_path / "votes.db").execute("SELECT COUNT(*) FROM battles").fetchone()[0]  # noqa: E731
    with pytest.raises(CLOError, match="the model server failed.*not JSON"):
        new_battle(services, "Hi?", "ko", voter="v1")
    assert battles() == 0
    services.battle_variants = lambda lang: ["good", "late-drop"]  # two whole answers (the same text: nothing to judge)
    with pytest.raises(CLOError, match="same answer"):
        new_battle(services, "Hi?", "ko", voter="v1")
    assert battles() == 0

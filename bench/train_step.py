"""Per training pair: time and peak memory of a CLO step vs an SFT step vs TRL's DPOTrainer with its NLL term.

All three train the same LoRA (r 16, α 32, no dropout, on q/k/v/o) of the same random model on the same
cross-lingual rows of the shipped sample, in float32 on the CPU, side by side in one run:

    clo            the project's path, clo.train.run.setup -> fit, method clo (λ·L_SFT + (1−λ)·L_CL, π_ref precomputed
                   once), back-propagating one sequence at a time (training.backward = sequence, the default)
    clo-direction  the same with training.backward = direction: the x_l pair, then the x_en pair
    sft  the same path, method sft (NLL of y_l | x_l only): the memory floor at the same pairs per step
    trl  trl.DPOTrainer, loss_type ["sigmoid", "sft"] with weights [0.5, 0.5] (mirrors λ = 0.5), two preference
         rows per pair (x_l: y_l ≻ y_en, x_en: y_en ≻ y_l), 2 × batch rows per step so it sees the same pairs per
         step, reference forward with the adapter disabled at every step (TRL's default)

Each runs in its own interpreter so its peak RSS (ru_maxrss) is its own; "above model" subtracts the RSS once
the model and data are loaded. Step times come from a TrainerCallback and skip the warm-up steps. CLO's one-off
reference pass is timed on its own and amortised per pair over one epoch. The model is the published
Qwen2.5-0.5B(-Instruct) architecture (bench/configs/) with random weights and the tiny offline tokenizer of
clo.models.tiny: nothing is downloaded, and the times are those of the real shapes (vocabulary 151,936).
By default the data is exactly one batch, so every step of every method trains on the same rows.

    python bench/train_step.py                                   # Qwen2.5-0.5B shape, ~3.5 min on 2 idle CPU cores
    python bench/train_step.py --batch-size 2 --steps 3          # closer to training; twice the work per step
    python bench/train_step.py --shape tiny --pairs 8 --steps 2  # under a minute: checks the plumbing

Timings need the cores to themselves: the report warns when another process shared them during the steps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
sys.path.insert(0, str(ROOT))  # `python bench/train_step.py` from anywhere finds clo/
METHODS = ("clo", "clo-direction", "sft", "trl")  # clo-direction: CLO with training.backward = direction
# (what, numerator, denominator, result key, target: the ratio must be ≤ this)
TARGETS = (
    ("CLO/TRL time per pair, training step", "clo", "trl", "s_per_pair", 0.8),
    ("CLO/TRL time per pair, step + π_ref pass amortised over 1 epoch", "clo", "trl", "s_per_pair_with_reference", 0.8),
    ("CLO/TRL peak RSS", "clo", "trl", "peak_mb", 1.0),
    ("CLO/TRL peak above model", "clo", "trl", "above_model_mb", 1.0),
    ("CLO/SFT peak RSS", "clo", "sft", "peak_mb", 1.3),
    ("CLO/SFT peak above model", "clo", "sft", "above_model_mb", 1.3),
    ("CLO-direction/TRL time per pair, training step", "clo-direction", "trl", "s_per_pair", 0.8),
    ("CLO-direction/SFT peak RSS", "clo-direction", "sft", "peak_mb", 1.3),
    ("CLO-direction/SFT peak above model", "clo-direction", "sft", "above_model_mb", 1.3),
)


# ---- memory and time probes ----

def rss_mb() -> float:
    """Resident set size now, from /proc/self/status (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_resident(model) -> None:
    """Read every weight once: from_pretrained memory-maps safetensors, so until the first forward touches them
    the weights are not in RSS, and "peak above model" would count them."""
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def step_timer():
    """A TrainerCallback recording the wall time of every optimizer step (forward, backward, optimizer)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []  # wall time
            self.cpu_seconds: list[float] = []  # this process's CPU time: shows when another process took the cores

        def on_step_begin(self, args, state, control, **kw):
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self.started)
            self.cpu_seconds.append(time.process_time() - self.cpu_started)

    return StepTimer()


# ---- the model: random weights, offline tokenizer ----

def build_model(shape: str, folder: Path) -> Path:
    """Write the benchmark model to folder/<shape>: clo.models.tiny's model, or a random model of bench/configs/<shape>.json;
    or, for a shorthand of clo.models.table (smollm2), the real model's folder under models/ (made once)."""
    from transformers.utils import logging

    from clo.models.table import MODELS, resolve_model
    from clo.models.tiny import build_tiny_model

    if shape in MODELS:
        return Path(resolve_model(shape)).resolve()
    logging.disable_progress_bar()
    tiny = build_tiny_model(folder / "tiny")
    if shape == "tiny":
        return tiny
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    raw = json.loads((CONFIGS / f"{shape}.json").read_text())
    for key in ("torch_dtype", "transformers_version", "architectures"):
        raw.pop(key)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    config.eos_token_id, config.pad_token_id, config.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, None
    assert len(tokenizer) <= config.vocab_size
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    path = folder / shape
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


# ---- workers: one method, one fresh interpreter ----

def recipe_for(method: str, args, model_dir: Path, work: Path):
    from clo.config import Recipe

    return Recipe.load(overrides={
        "model.name_or_path": str(model_dir), "model.load_in_4bit": "false",
        "method.method": "sft" if method == "sft" else "clo",
        "training.backward": "direction" if method == "clo-direction" else "sequence",
        "data.source": args.data, "data.target_lang": "ko", "data.pairs": args.pairs, "data.cache_dir": str(work / "cache"),
        "lora.r": 16, "lora.alpha": 32, "lora.dropout": 0.0, "lora.target_modules": "q_proj,k_proj,v_proj,o_proj",
        "training.max_steps": args.warmup + args.steps, "training.batch_size": args.batch_size, "training.grad_accum": 1,
        "training.max_length": args.max_length, "training.max_prompt_length": args.max_length // 2,
        "training.save_steps": 0, "training.logging_steps": 1, "training.logits_chunk": args.logits_chunk,
        "training.adapters_dir": str(work / "adapters"), "training.runs_dir": str(work / "runs"),
    })


def worker(method: str, args, model_dir: Path, work: Path) -> dict:
    """Train `method` for warmup + steps steps; return its times (s) and memory (MB)."""
    import peft  # noqa: F401  (import everything every worker imports before the "loaded" reading)
    import torch
    import trl  # noqa: F401

    import clo.train.batches
    import clo.train.run

    recipe = recipe_for(method, args, model_dir, work)
    timer, result = step_timer(), {"method": method, "pairs": recipe.data.pairs}
    if method in ("clo", "clo-direction", "sft"):
        s = clo.train.run.setup(recipe)
        make_resident(s.model)
        result["loaded_mb"] = rss_mb()
        reference = clo.train.run.share_reference_logps  # fit calls it by module name: time the one-off π_ref pass

        def timed_reference(*a, **kw):
            started = time.perf_counter()
            reference(*a, **kw)
            result["reference_s"], result["reference_peak_mb"] = time.perf_counter() - started, peak_rss_mb()

        clo.train.run.share_reference_logps = timed_reference
        clo.train.run.fit(s, recipe, recipe.method.method[0], work / "runs", callbacks=[timer])
        keys = clo.train.batches.needed_keys(recipe.method.method[0])  # the sequences π_θ sees per pair
        result["tokens_per_pair"] = sum(len(f[f"{k}_input_ids"]) for f in s.features for k in keys) / len(s.features)
    else:
        result.update(run_trl(recipe, timer, work))
    step_s = statistics.median(timer.seconds[args.warmup:])  # the median: robust to a step slowed by another process
    pairs_per_step = recipe.training.batch_size
    result.update(
        step_times_s=timer.seconds, step_cpu_times_s=timer.cpu_seconds, warmup=args.warmup, pairs_per_step=pairs_per_step,
        s_per_step=step_s, cpu_s_per_step=statistics.median(timer.cpu_seconds[args.warmup:]), s_per_pair=step_s / pairs_per_step,
        reference_s_per_pair=result.get("reference_s", 0.0) / recipe.data.pairs,
        peak_mb=peak_rss_mb(), torch_threads=torch.get_num_threads(),
    )
    result["s_per_pair_with_reference"] = result["s_per_pair"] + result["reference_s_per_pair"]
    result["above_model_mb"] = result["peak_mb"] - result["loaded_mb"]
    return result


def run_trl(recipe, timer, work: Path) -> dict:
    """TRL's DPOTrainer (sigmoid + sft) on the same pairs: two conversational preference rows per pair."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from clo.train.data import build_pairs

    data = build_pairs(recipe.data)
    turn = lambda role, text: [{"role": role, "content": text}]  # noqa: E731
    rows = []
    for r in data.rows:
        rows.append({"prompt": turn("user", r["prompt_tgt"]), "chosen": turn("assistant", r["response_tgt"]),
                     "rejected": turn("assistant", r["response_en"])})
        rows.append({"prompt": turn("user", r["prompt_en"]), "chosen": turn("assistant", r["response_en"]),
                     "rejected": turn("assistant", r["response_tgt"])})
    name = recipe.model.name_or_path
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, use_safetensors=True)  # as clo.load.load_base on CPU
    make_resident(model)
    loaded = rss_mb()
    t, lora = recipe.training, recipe.lora
    config = DPOConfig(
        output_dir=str(work / "runs" / "trl"), per_device_train_batch_size=2 * t.batch_size, gradient_accumulation_steps=1,
        max_steps=t.max_steps, learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup,
        logging_steps=1, save_strategy="no", report_to="none", seed=t.seed, use_cpu=True, dataloader_num_workers=0,
        optim="adamw_torch",
        bf16=False, gradient_checkpointing=False,  # TRL defaults both on; CLO trains LoRA in float32 without it on CPU
        max_length=t.max_length, beta=recipe.method.beta, loss_type=["sigmoid", "sft"],
        loss_weights=[1 - recipe.method.lam, recipe.method.lam], precompute_ref_log_probs=False,
    )
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
                             bias="none", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[timer])
    trainer.train()
    ds = trainer.train_dataset
    tokens = sum(min(len(p) + len(c), t.max_length) + min(len(p) + len(r), t.max_length)  # the collator keeps the start
                 for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    return {"loaded_mb": loaded, "tokens_per_pair": tokens / len(data.rows)}


# ---- parent: build the model once, run the workers, compare ----

def run_workers(args, model_dir: Path, work: Path) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    results = {}
    for method in args.methods:
        out, log = work / f"{method}.json", work / f"{method}.log"
        cmd = [sys.executable, __file__, "--worker", method, "--model-dir", str(model_dir), "--work", str(work),
               "--result", str(out), *passthrough(args)]
        started = time.perf_counter()
        with log.open("w") as fh:
            code = subprocess.run(cmd, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            sys.exit(f"worker {method} failed (exit {code}); the end of its log:\n{tail}")
        r = results[method] = json.loads(out.read_text())
        print(f"  {method}: done in {time.perf_counter() - started:.0f} s; {cores_busy(r):.1f} of {r['torch_threads']} "
              "threads busy during its steps", flush=True)
    return results


def passthrough(args) -> list[str]:
    return ["--shape", args.shape, "--pairs", str(args.pairs), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--data", args.data,
            "--logits-chunk", str(args.logits_chunk)]


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def cores_busy(r: dict) -> float:
    """CPU seconds per wall second of the timed steps: below the thread count, another process shared the cores."""
    return r["cpu_s_per_step"] / r["s_per_step"]


def report(results: dict[str, dict]) -> tuple[str, list[dict]]:
    lines = ["| method | s/step | CPU s/step | s/pair | π_ref s/pair (once) | tokens/pair | peak RSS MB | peak above model MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, r in results.items():
        ref = f"{r['reference_s_per_pair']:.2f}" if "reference_s" in r else "—"
        lines.append(f"| {m} | {r['s_per_step']:.2f} | {r['cpu_s_per_step']:.2f} | {r['s_per_pair']:.2f} | {ref} "
                     f"| {r['tokens_per_pair']:.0f} | {r['peak_mb']:.0f} | {r['above_model_mb']:.0f} |")
    clo = results.get("clo")
    if clo and "reference_s" in clo:
        lines.append(f"\nCLO's π_ref pass ({plural(clo['pairs'], 'pair')}, once): {clo['reference_s']:.1f} s, peak RSS so far "
                     f"{clo['reference_peak_mb']:.0f} MB ({clo['reference_peak_mb'] - clo['loaded_mb']:.0f} above model)\n")
    ratios = []
    for name, num, den, key, target in TARGETS:
        if num not in results or den not in results:
            continue
        value = results[num][key] / results[den][key]
        ratios.append({"name": name, "ratio": value, "target": target, "pass": value <= target})
        lines.append(f"- {name}: {value:.2f}×  (target ≤ {target:.1f})  {'PASS' if value <= target else 'MISS'}")
    shared = [m for m, r in results.items() if cores_busy(r) < 0.75 * r["torch_threads"]]
    if shared:
        lines.append(f"\nWARNING: {', '.join(shared)} ran with the cores shared by another process "
                     "(CPU s/step well below threads × s/step): the time ratios are not comparable; rerun on a quiet machine.")
    return "\n".join(lines), ratios


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2.5-0.5b", help="tiny (clo.models.tiny), a config in bench/configs/ (random weights), "
                   "or smollm2 (the real model, clo.models.table)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--logits-chunk", type=int, default=0, help="training.logits_chunk: answer positions per chunk of the "
                   "output layer and log-softmax (0: whole logits, as before the chunking)")
    p.add_argument("--pairs", type=int, help="pairs in the data (default: --batch-size, so every step sees the same rows)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=1, help="cross-lingual pairs per step (TRL: twice as many rows)")
    p.add_argument("--max-length", type=int, default=192, help="longest prompt + answer in tokens (CLO's prompt: half of it)")
    p.add_argument("--data", default="sample", help="English/Korean pairs: 'sample' (assets/sample) or a .jsonl with *_ko fields")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_step.json"))
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.pairs = args.pairs or args.batch_size
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        p.error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(METHODS)}")
    if args.data != "sample":
        args.data = str(Path(args.data).resolve())
    if args.worker:
        args.result.write_text(json.dumps(worker(args.worker, args, args.model_dir, args.work), indent=2))
        return

    import torch

    started = time.perf_counter()
    print(f"# CLO vs SFT vs TRL DPO(sigmoid+sft): one training step, per pair ({dt.date.today()})")
    print(f"machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"no GPU used; shape {args.shape}, {plural(args.batch_size, 'pair')}/step, {plural(args.pairs, 'pair')} in the data, "
          f"max_length {args.max_length}, {args.warmup} warm-up + {args.steps} timed steps", flush=True)
    with tempfile.TemporaryDirectory(prefix="clo-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_model(args.shape, work / "model")
        print(f"  model built in {time.perf_counter() - started:.0f} s", flush=True)
        results = run_workers(args, model_dir, work)
    table, ratios = report(results)
    print("\n" + table)
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    versions = {name: __import__(name).__version__ for name in ("torch", "transformers", "peft", "trl")}
    out.write_text(json.dumps({"date": dt.date.today().isoformat(), "command": " ".join(sys.argv), "cpus": os.cpu_count(),
                               "versions": versions, "settings": {k: v for k, v in vars(args).items() if v is not None and k != "out"},
                               "results": results, "ratios": ratios, "total_s": total}, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

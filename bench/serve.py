"""Latency of the side-by-side request: 3 variants × 2 languages in ONE batched call vs 6 sequential calls vs 1 request.

The app's Compare view asks the base model, the SFT adapter and the CLO adapter the same question in the target
language and in English: 6 requests. Each engine available here answers them (a) as one batch, (b) one after
another, and (c) a single request is timed for reference; all greedy, the same number of new tokens, medians
over --repeats, side by side in one run. Models: clo.tiny's model and a random-weight model of Qwen2.5-0.5B's
published shape (bench/configs/), each with two random LoRA adapters of rank 16; nothing is downloaded.

    python bench/serve.py                              # tiny + qwen2.5-0.5b, peft and (where installed) vllm
    python bench/serve.py --shapes tiny --engines peft # seconds

Target (PEFT engine): the 6-request side-by-side ≤ 1.5× one request's latency.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET = 1.5


def timed(engine, requests, repeats: int) -> tuple[float, int]:
    """Median wall seconds of engine.generate(requests) over `repeats` runs, and the tokens generated."""
    seconds, tokens = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        answers = engine.generate(requests)
        seconds.append(time.perf_counter() - started)
        tokens = sum(a.tokens for a in answers)
    return statistics.median(seconds), tokens


def first_token_s(engine, requests) -> float:
    """Seconds until every answer of the batch has its first token: the prefill, mostly."""
    started, seconds = time.perf_counter(), None
    for snapshot in engine.stream(requests):
        if seconds is None and all(a.tokens for a in snapshot):
            seconds = time.perf_counter() - started
    return seconds


def measure(engine, prompts: dict[str, str], max_tokens: int, repeats: int) -> dict:
    from clo.engines import BASE, Request, Sampling

    sampling = Sampling(max_tokens=max_tokens)
    requests = [Request(v, [{"role": "user", "content": p}], sampling) for p in prompts.values() for v in (BASE, "sft", "clo")]
    engine.generate(requests)  # warm-up
    single, single_tokens = timed(engine, requests[:1], repeats)
    batched, batched_tokens = timed(engine, requests, repeats)
    sequential = sum(timed(engine, [r], 1)[0] for r in requests)
    return {"single_s": single, "batched_s": batched, "sequential_s": sequential, "single_tokens": single_tokens,
            "single_first_token_s": first_token_s(engine, requests[:1]), "batched_first_token_s": first_token_s(engine, requests),
            "batched_tokens": batched_tokens, "batched_vs_single": batched / single, "sequential_vs_batched": sequential / batched}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="tiny,qwen2.5-0.5b")
    p.add_argument("--engines", default="peft,vllm")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = p.parse_args()

    import torch

    from clo.data import SAMPLE
    from clo.engines import find_adapters
    from clo.engines.vllm_engine import vllm_usable
    from clo.tiny import build_random_adapter
    from train_step import build_model

    row = json.loads(SAMPLE.read_text(encoding="utf-8").splitlines()[0])
    prompts = {"ko": row["prompt_ko"], "en": row["prompt_en"]}
    engines = args.engines.split(",")
    usable, why = vllm_usable()
    if "vllm" in engines and not usable:
        print(f"vllm skipped: {why}")
        engines.remove("vllm")
    print(f"# side-by-side latency ({dt.date.today()}): {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{args.max_tokens} new tokens, greedy, median of {args.repeats}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="clo-serve-bench-") as tmp:
        for shape in args.shapes.split(","):
            model = build_model(shape, Path(tmp) / "model")
            adapters = Path(tmp) / f"adapters-{shape}"
            for seed, name in enumerate(("sft", "clo"), 1):
                build_random_adapter(model, adapters / name, seed=seed, rank=16, scale=0.02)
            for kind in engines:
                started = time.perf_counter()
                if kind == "peft":
                    from clo.engines.peft_engine import PeftEngine

                    engine = PeftEngine(str(model), find_adapters(adapters))
                else:
                    from clo.engines.vllm_engine import VLLMEngine

                    engine = VLLMEngine(str(model), find_adapters(adapters), max_model_len=1024)
                load_s = time.perf_counter() - started
                r = {"shape": shape, "engine": kind, "load_s": load_s, **measure(engine, prompts, args.max_tokens, args.repeats)}
                engine.close()
                del engine
                results.append(r)
                print(f"  {shape} / {kind}: loaded in {load_s:.0f} s", flush=True)

    print("\n| model | engine | 1 request s | 6 in one batch s | 6 sequential s | batch / single | sequential / batch "
          "| first token: 1 / 6 s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['shape']} | {r['engine']} | {r['single_s']:.2f} | {r['batched_s']:.2f} | {r['sequential_s']:.2f} "
              f"| {r['batched_vs_single']:.2f}× | {r['sequential_vs_batched']:.2f}× "
              f"| {r['single_first_token_s']:.2f} / {r['batched_first_token_s']:.2f} |")
    print()
    for r in results:
        if r["engine"] == "peft":
            ok = r["batched_vs_single"] <= TARGET
            print(f"- {r['shape']}, PEFT: side-by-side / single = {r['batched_vs_single']:.2f}×  (target ≤ {TARGET})  "
                  f"{'PASS' if ok else 'MISS'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": dt.date.today().isoformat(), "args": vars(args), "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

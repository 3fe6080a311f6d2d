"""Leaderboard cost on 100,000 votes: clo.evaluate.ratings' aggregated-count bootstrap vs a per-row bootstrap.

Synthetic blind votes among 4 variants (base, sft, dpo, clo, with known Bradley–Terry strengths) in 6 languages
(zh, de, ko, id, sw, yo); 15% ties, 5% both_bad. Timed, side by side in one run:

    clo.evaluate.ratings  wtl_table + win_rate_matrix + bradley_terry with 1,000 resamples, each call aggregating the rows
                 itself as a caller would. The bootstrap redraws each pair's (wins, ties, losses) from a multinomial
                 and refits all resamples on the aggregated counts.
    per-row      the original arena bootstrap, in the style of FastChat's compute_bootstrap_bt (written here):
                 resample the 100,000 rows with replacement, refit Bradley–Terry on the rows (logistic loss per
                 vote, the same L-BFGS and prior), repeat. It is slow, so only --row-rounds rounds (20) are timed
                 and the time is scaled to 1,000; the output says so.

The table checks both estimators: the same point ratings (same maximum likelihood), and bootstrap spreads that
agree. Targets: clo.evaluate.ratings all-in ≤ 1 s on 2 cores, per-row / aggregated-count bootstrap ≥ 20×.

    python bench/ratings.py                      # ~5 s on 2 CPU cores
    python bench/ratings.py --votes 1000000 --row-rounds 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/ratings.py` from anywhere finds clo/

from clo.evaluate.ratings import PRIOR_SD, bradley_terry, win_rate_matrix, wtl_table  # noqa: E402

STRENGTHS = {"base": 0.0, "sft": 0.35, "dpo": 0.5, "clo": 0.8}  # θ in log-odds
LANGUAGES = ("zh", "de", "ko", "id", "sw", "yo")
TARGET_S, TARGET_SPEEDUP = 1.0, 20.0


def synthetic_votes(n: int, seed: int) -> pd.DataFrame:
    """n blind votes between random pairs on random sides: 5% both_bad; of the rest 15% ties, and
    P(a) = σ(θ_a − θ_b) − 0.075, so that a tie counted as half a win leaves E[score of a] = σ(θ_a − θ_b)."""
    rng = np.random.default_rng(seed)
    names, theta = np.array(list(STRENGTHS)), np.array(list(STRENGTHS.values()))
    a = rng.integers(0, len(names), n)
    b = (a + rng.integers(1, len(names), n)) % len(names)
    p, v = expit(theta[a] - theta[b]), rng.random(n)
    judged = np.where(v < p - 0.075, "a", np.where(v < p + 0.075, "tie", "b"))
    outcome = np.where(rng.random(n) < 0.05, "both_bad", judged)
    return pd.DataFrame({"variant_a": names[a], "variant_b": names[b], "outcome": outcome,
                         "language": rng.choice(LANGUAGES, n), "blind": True})


def row_level_fit(i: np.ndarray, j: np.ndarray, score: np.ndarray, n_variants: int) -> np.ndarray:
    """Bradley–Terry θ from individual votes: minimise Σ_rows BCE(σ(θ_i − θ_j), score), score 1 / ½ / 0."""
    ridge = 1.0 / PRIOR_SD**2

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        d = theta[i] - theta[j]
        loss = np.logaddexp(0.0, -d).sum() + ((1.0 - score) * d).sum() + 0.5 * ridge * theta @ theta
        g = expit(d) - score
        grad = np.bincount(i, g, n_variants) - np.bincount(j, g, n_variants) + ridge * theta
        return loss / len(d), grad / len(d)

    result = minimize(loss_and_grad, np.zeros(n_variants), jac=True, method="L-BFGS-B",
                      options={"maxiter": 1000, "gtol": 1e-9, "ftol": 1e-14})
    return result.x


def encode_rows(votes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per vote: indices of variant_a and variant_b (sorted names), score of a (1, ½, 0) and whether it was judged."""
    names = sorted(STRENGTHS)
    i = pd.Categorical(votes["variant_a"], categories=names).codes.astype(np.int64)
    j = pd.Categorical(votes["variant_b"], categories=names).codes.astype(np.int64)
    score = votes["outcome"].map({"a": 1.0, "tie": 0.5, "b": 0.0}).to_numpy(dtype=float, na_value=np.nan)
    return i, j, score, votes["outcome"].to_numpy() != "both_bad"


def row_bootstrap(votes: pd.DataFrame, rounds: int, seed: int) -> np.ndarray:
    """Per-row bootstrap: each round draws len(votes) votes with replacement and refits on the rows. [rounds, V].
    The votes are encoded once, so a round costs one resample of four arrays and one row-level fit."""
    rng = np.random.default_rng(seed)
    i, j, score, judged = encode_rows(votes)
    fits = []
    for _ in range(rounds):
        rows = rng.integers(0, len(votes), len(votes))
        rows = rows[judged[rows]]
        fits.append(row_level_fit(i[rows], j[rows], score[rows], len(STRENGTHS)))
    return np.array(fits)


def timed(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--votes", type=int, default=100_000)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--row-rounds", type=int, default=20, help="per-row rounds actually run, scaled to --resamples")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ratings.json"))
    args = p.parse_args()

    votes = synthetic_votes(args.votes, args.seed)
    print(f"# ratings ({dt.date.today()}): {len(votes):,} votes, {len(STRENGTHS)} variants × {len(LANGUAGES)} "
          f"languages, {os.cpu_count()} CPU cores, median of {args.repeats} after a warm-up", flush=True)
    parts = {
        "wtl_table": lambda: wtl_table(votes, focus="clo"),
        "win_rate_matrix": lambda: win_rate_matrix(votes),
        "bradley_terry": lambda: bradley_terry(votes, n_bootstrap=args.resamples, seed=args.seed),
    }
    seconds = {name: timed(fn, args.repeats) for name, fn in parts.items()}
    total = sum(seconds.values())

    started = time.perf_counter()
    row_fits = row_bootstrap(votes, args.row_rounds, args.seed)
    row_s = (time.perf_counter() - started) / args.row_rounds * args.resamples
    speedup = row_s / seconds["bradley_terry"]

    bt = bradley_terry(votes, n_bootstrap=args.resamples, seed=args.seed)
    names, points = sorted(STRENGTHS), 400 / np.log(10)

    def to_ratings(theta: np.ndarray) -> np.ndarray:  # base at 1000, like clo.evaluate.ratings' default anchor
        return 1000 + points * (theta - theta[..., [names.index("base")]])

    truth = dict(zip(names, to_ratings(np.array([STRENGTHS[n] for n in names]))))
    i, j, score, judged = encode_rows(votes)
    row_point = dict(zip(names, to_ratings(row_level_fit(i[judged], j[judged], score[judged], len(names)))))
    row_sd = dict(zip(names, to_ratings(row_fits).std(axis=0, ddof=1)))
    print("\n| variant | true rating | BT rating | per-row fit | 95% interval | sd: aggregated / per-row |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in bt.itertuples():
        print(f"| {r.variant} | {truth[r.variant]:.1f} | {r.rating:.1f} | {row_point[r.variant]:.1f} "
              f"| {r.lower:.1f} – {r.upper:.1f} | {(r.upper - r.lower) / 3.92:.1f} / {row_sd[r.variant]:.1f} |")
    print(f"(sd aggregated: 95% interval width / 3.92 over {args.resamples:,} resamples; per-row: "
          f"{args.row_rounds} resamples)")

    print("\n| step | seconds |\n|---|---:|")
    for name, s in seconds.items():
        label = f"{name} ({args.resamples:,} aggregated-count resamples)" if name == "bradley_terry" else name
        print(f"| {label} | {s:.3f} |")
    print(f"| all three | {total:.3f} |")
    print(f"| per-row bootstrap, {args.resamples:,} resamples (projected: {args.row_rounds} rounds timed, "
          f"× {args.resamples / args.row_rounds:g}) | {row_s:.1f} |")
    print()
    print(f"- W/T/L + win-rate matrix + Bradley–Terry with {args.resamples:,} resamples: {total:.3f} s  "
          f"(target ≤ {TARGET_S:g} s)  {'PASS' if total <= TARGET_S else 'MISS'}")
    print(f"- per-row / aggregated-count bootstrap: {speedup:.0f}×  (target ≥ {TARGET_SPEEDUP:g}×)  "
          f"{'PASS' if speedup >= TARGET_SPEEDUP else 'MISS'}")

    results = {"votes": len(votes), "seconds": seconds, "total_s": total, "row_bootstrap_s_projected": row_s,
               "row_rounds_timed": args.row_rounds, "speedup": speedup,
               "bradley_terry": bt.to_dict(orient="records"), "truth": truth, "row_level_fit": row_point}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": dt.date.today().isoformat(), "args": vars(args), "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Benchmark scores beside the votes: the default task sets per language, the stored rows, the Leaderboard's table.

`python -m clo evaluate` (clo.evaluate.harness) scores the base model and its adapters with lm-evaluation-harness
and stores one row per (variant, task, metric) here, in the vote store's database (table `benchmarks`, schema
migration 11); VoteStore binds `record_benchmark` and `benchmarks` as its methods:

    store.record_benchmark([BenchmarkRow(...), ...])       # one run's rows, in one transaction
    frame = store.benchmarks(base="smollm2")               # every stored row (of one base model: name or fingerprint)
    benchmark_table(frame, "ko")                           # what the Leaderboard shows: accuracy ± s.e., n, chance, note

An adapter whose log-likelihoods equal the base model's (the guard in clo.evaluate.harness: all lora_B zero, or
not applied) is stored with effect "no effect" and no metric, value or n: it never has a score of its own.

This module imports no torch and no lm_eval (the vote store and the parser import it); pandas only where a frame
is built.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from clo import ROOT, CLOError

if TYPE_CHECKING:
    import pandas as pd

    from clo.evaluate.store import VoteStore

TASKS_DIR = ROOT / "assets" / "benchmarks"  # the project's own lm-eval tasks (smoke_en, smoke_ko, smoke_sw, smoke)
ENGLISH = "belebele_eng_Latn"  # English retention: every default set has it (the paper's claim is that CLO keeps it)

# The tasks `python -m clo evaluate --lang L` runs when --tasks is not given (ENGLISH is added to each). Every name
# is registered in lm-evaluation-harness 0.4.13 (tests/test_benchmarks.py asserts it). Belebele: FLORES passages
# with four answers (122 languages); KoBEST: five Korean tasks; XCOPA: causal commonsense, two choices.
DEFAULT_TASKS: dict[str, tuple[str, ...]] = {
    "ko": ("belebele_kor_Hang", "kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic"),
    "sw": ("belebele_swh_Latn", "xcopa_sw"),
    "yo": ("belebele_yor_Latn",),
    "zh": ("belebele_zho_Hans", "xcopa_zh"),
    "de": ("belebele_deu_Latn",),
    "id": ("belebele_ind_Latn",),
    "en": (ENGLISH,),
}
SMOKE = ("smoke_en", "smoke_ko", "smoke_sw")  # the group `smoke` (assets/benchmarks/_smoke.yaml)

# Chance accuracy where a row does not carry it (a run's rows carry the mean of 1 / choices over the items scored,
# read from lm-eval's samples): by task name, the longest matching prefix wins
CHANCE = {"belebele_": 0.25, "smoke_": 0.25, "kobest_hellaswag": 0.25, "kobest_boolq": 0.5, "kobest_copa": 0.5,
          "kobest_sentineg": 0.5, "kobest_wic": 0.5, "xcopa_": 0.5}
METRICS = ("acc", "acc_norm")  # what is stored of each task; the table shows acc
APPLIED, NO_EFFECT = "applied", "no effect"
NEAR_CHANCE_NOTE = "near chance: not meaningful at this size"
NO_EFFECT_NOTE = "no effect: identical to the base"


@dataclass
class BenchmarkRow:
    """One stored row: a variant's score on one task by one metric (metric, value, stderr, n None: no effect)."""

    base_model: str  # the base model's name as given
    base_hash: str | None  # clo.hub.model_fingerprint of it (None where its files cannot be read)
    variant: str  # "base" or the adapter's served name
    adapter_hash: str | None  # Adapter.sha256 (None for the base)
    source: str | None  # "owner/name@commit" of an adapter fetched from the hub
    task: str
    task_version: str | None  # lm-eval's results["versions"][task]
    language: str | None  # the task's language (task_language), None when unknown
    num_fewshot: int
    item_limit: int | None  # --limit (None: every item); "limit" is a reserved word in SQL
    metric: str | None
    value: float | None
    stderr: float | None
    n: int | None  # items scored
    chance: float | None  # mean of 1 / number of choices over those items
    items: str | None  # sha256 over the items' ids and prompts: equal for every variant of one run
    effect: str  # APPLIED or NO_EFFECT
    lm_eval: str  # lm-evaluation-harness version
    run_id: str  # one `python -m clo evaluate`
    created_utc: str = ""


COLUMNS = tuple(f.name for f in fields(BenchmarkRow))


def default_tasks(lang: str) -> list[str]:
    """The default task set of language `lang` (a code clo.languages knows), English retention last."""
    from clo.languages import language

    known = language(lang)
    if known.code not in DEFAULT_TASKS:
        hint = f" (Belebele's is belebele_{known.nllb})" if known.nllb else ""
        raise CLOError(f"no default benchmarks for --lang {known.code}: name them with --tasks{hint}; defaults exist "
                       f"for {', '.join(DEFAULT_TASKS)}")
    return list(dict.fromkeys([*DEFAULT_TASKS[known.code], ENGLISH]))


def task_language(task: str) -> str | None:
    """The language a task is in, from its name: belebele_kor_Hang → ko, kobest_* → ko, xcopa_sw → sw,
    smoke_ko → ko; None for a name this does not know."""
    from clo.languages import language

    if task.startswith("kobest_"):
        return "ko"
    parts = task.split("_")
    code = parts[1] if task.startswith("belebele_") and len(parts) == 3 else (
        parts[-1] if task.startswith(("xcopa_", "smoke_")) and len(parts) == 2 else None)
    try:
        return language(code).code if code else None
    except CLOError:
        return None


def near_chance(value: float, stderr: float | None, chance: float | None, n: int | None) -> bool:
    """Whether `value` is within the noise of chance: |value − chance| ≤ 1.96 × the larger of its standard error
    and chance's own (√(chance·(1 − chance)/n)), so a degenerate s.e. of 0 (0 or n right of n) claims no certainty."""
    if chance is None or _missing(chance):
        return False
    se = 0.0 if _missing(stderr) else float(stderr)
    if n and not _missing(n):
        se = max(se, math.sqrt(chance * (1 - chance) / n))
    return abs(value - chance) <= 1.96 * se


def chance_of(task: str) -> float | None:
    prefix = max((p for p in CHANCE if task.startswith(p)), key=len, default=None)
    return CHANCE[prefix] if prefix else None


# ---- the store (VoteStore binds these two as methods) ----

def record_benchmark(store: VoteStore, rows: list[BenchmarkRow] | None = None, **fields_) -> int:
    """Store one run's rows in one transaction (all or none); returns how many. A no-effect row carries no score.
    Instead of `rows`, one row's fields as keywords: a record of `store.benchmarks()` (NaN read as missing), so the
    rows of one store copy into another (the app collects an evaluation job's results so)."""
    if rows is None:
        rows = [_row_from(fields_)]
    elif fields_:
        raise CLOError("record_benchmark takes a list of rows or one row's fields, not both")
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    for row in rows:
        if row.effect not in (APPLIED, NO_EFFECT):
            raise CLOError(f"a benchmark row's effect is {APPLIED!r} or {NO_EFFECT!r}, got {row.effect!r}")
        if row.effect == NO_EFFECT and (row.value is not None or row.metric is not None):
            raise CLOError(f"{row.variant} has no effect on {row.task}: it is stored without a score of its own")
        if row.effect == APPLIED and (row.value is None or not 0 <= row.value <= 1 or row.metric is None):
            raise CLOError(f"{row.variant} on {row.task}: {row.metric} must be an accuracy in [0, 1], got {row.value!r}")
    with store._transaction() as cur:
        for row in rows:
            store._insert(cur, "benchmarks", {**asdict(row), "id": str(uuid.uuid4()), "created_utc": row.created_utc or now})
    return len(rows)


def _row_from(record: dict) -> BenchmarkRow:
    """A BenchmarkRow from a frame's record: NaN and pandas' missing values become None, numpy numbers Python's."""
    unknown = set(record) - set(COLUMNS) - {"id"}
    if unknown:
        raise CLOError(f"a benchmark row has no field {sorted(unknown)[0]!r}; its fields: {', '.join(COLUMNS)}")
    clean = {}
    for name in COLUMNS:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            try:
                import pandas as pd

                if pd.isna(value):
                    value = None
            except (TypeError, ValueError):  # not a scalar pandas can judge: left as it is
                pass
        if value is not None and hasattr(value, "item"):  # numpy int64 / float64
            value = value.item()
        clean[name] = value
    for name in ("num_fewshot", "item_limit", "n"):
        if clean[name] is not None:
            clean[name] = int(clean[name])
    return BenchmarkRow(**clean)


def benchmarks(store: VoteStore, base: str | None = None) -> pd.DataFrame:
    """Every stored benchmark row as a DataFrame (columns COLUMNS, oldest first); `base`: only rows on that base
    model, named as given or by its fingerprint. A store from before benchmarks were stored has none."""
    import pandas as pd

    if store.blank or not store._has_table("benchmarks"):
        return pd.DataFrame(columns=list(COLUMNS))
    query, args = f"SELECT {', '.join(COLUMNS)} FROM benchmarks", ()
    if base:
        query, args = query + " WHERE base_model = ? OR base_hash = ?", (base, base)
    rows, _ = store._read(query + " ORDER BY created_utc, id", args)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def benchmark_count(store: VoteStore) -> int:
    """How many benchmark rows are stored: rows are only ever added, so it changes exactly when one is."""
    if store.blank or not store._has_table("benchmarks"):
        return 0
    rows, _ = store._read("SELECT COUNT(*) FROM benchmarks")
    return int(rows[0][0])


# ---- what the Leaderboard shows ----

TABLE_COLUMNS = ("task", "language", "shots", "variant", "accuracy", "n", "chance", "note", "base")


def benchmark_table(frame: pd.DataFrame, language: str | None) -> pd.DataFrame:
    """One row per (base, task, shots, limit, variant) from `frame` (store.benchmarks()): the newest result per
    (base, adapter hash, task, shots, limit), so a rerun replaces a score and a retrained adapter (a new hash) is
    a row of its own (its name then followed by the hash's start). `language`: that language's tasks and the
    English ones (English retention), None for all.

    Columns TABLE_COLUMNS: accuracy is lm-eval's `acc` as a percentage with its standard error ("62.4 ± 1.7"),
    n the items scored, chance 1 / number of choices ("25%"), note NEAR_CHANCE_NOTE when the 95% interval
    (value ± 1.96·s.e., the s.e. at least chance's own: `near_chance`) contains chance, NO_EFFECT_NOTE for an adapter the guard found identical to the base
    (no accuracy: it has no score of its own), base the base model's name."""
    import pandas as pd

    empty = pd.DataFrame(columns=list(TABLE_COLUMNS))
    if frame is None or frame.empty:
        return empty
    rows = frame[(frame["metric"] == "acc") | (frame["effect"] == NO_EFFECT)].copy()
    if language:
        rows = rows[rows["language"].isin({language, "en"})]
    if rows.empty:
        return empty
    rows["base_key"] = rows["base_hash"].fillna(rows["base_model"])
    rows["hash_key"] = rows["adapter_hash"].fillna("base")
    rows["limit_key"] = rows["item_limit"].fillna(-1)
    key = ["base_key", "hash_key", "task", "num_fewshot", "limit_key"]
    rows = rows.sort_values("created_utc").groupby(key, sort=False).tail(1)
    # one name, several hashes (an adapter retrained under its old name): each row names its hash
    hashes = rows.groupby(["base_key", "variant"])["hash_key"].transform("nunique")
    rows["label"] = [f"{v} ({h[:6]})" if k > 1 and h != "base" else v
                     for v, h, k in zip(rows["variant"], rows["hash_key"], hashes)]
    out = []
    for r in rows.itertuples(index=False):
        chance = r.chance if r.chance is not None and not _missing(r.chance) else chance_of(r.task)
        if r.effect == NO_EFFECT:
            accuracy, n, note = "—", None, NO_EFFECT_NOTE
        else:
            se = 0.0 if _missing(r.stderr) else float(r.stderr)
            accuracy = f"{100 * r.value:.1f} ± {100 * se:.1f}"
            n = int(r.n) if not _missing(r.n) else None
            note = NEAR_CHANCE_NOTE if near_chance(r.value, se, chance, n) else ""
        out.append({"task": r.task, "language": r.language, "shots": int(r.num_fewshot), "variant": r.label,
                    "accuracy": accuracy, "n": n, "chance": _percent(chance), "note": note, "base": r.base_model})
    table = pd.DataFrame(out, columns=list(TABLE_COLUMNS))
    order = {"base": 0}  # the base model first in each task, then the adapters by name
    table["_first"] = table["variant"].map(lambda v: order.get(v, 1))
    table = table.sort_values(["base", "language", "task", "shots", "_first", "variant"], na_position="last")
    return table.drop(columns="_first").reset_index(drop=True).astype({"n": "Int64"})


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _percent(x: float | None) -> str:
    if x is None or _missing(x):
        return ""
    return f"{100 * x:.0f}%" if abs(100 * x - round(100 * x)) < 0.05 else f"{100 * x:.1f}%"


def smoke_dir() -> Path:
    """assets/benchmarks: lm-eval's include_path for the project's own tasks."""
    if not (TASKS_DIR / "_smoke.yaml").is_file():
        raise CLOError(f"the smoke task's files are missing from {TASKS_DIR}: restore assets/benchmarks/")
    return TASKS_DIR

"""`python -m clo evaluate` on lm-evaluation-harness: the smoke task offline on the tiny model, the guard against an
adapter with no effect, the stored rows (SQLite and PostgreSQL), the Leaderboard's table, the default task names.

    python -m pytest tests/test_benchmarks.py       # ~30 s: one evaluation of base + two adapters on smoke, in process
"""

import json
import math

import pytest

from conftest import run_clo

# one worker under xdist (--dist loadgroup): the module's evaluation (the `evaluated` fixture) then runs once
pytestmark = pytest.mark.xdist_group("benchmarks")

SMOKE_ITEMS = 12  # per language (assets/benchmarks/smoke_*.jsonl)


def zero_adapter(model, folder):
    """A LoRA adapter whose lora_B weights are all zero: applied, it changes nothing."""
    from safetensors.torch import load_file, save_file

    from clo.models.tiny import build_random_adapter

    build_random_adapter(model, folder, seed=5)
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    assert any("lora_B" in k for k in tensors)
    save_file({k: v.zero_() if "lora_B" in k else v for k, v in tensors.items()}, str(weights), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def evaluated(tiny_model, tmp_path_factory):
    """One `python -m clo evaluate --tasks smoke --json` of base, a random adapter and a zero one, in process."""
    from clo.models.tiny import build_random_adapter

    root = tmp_path_factory.mktemp("bench")
    build_random_adapter(tiny_model, root / "adapters" / "alpha", seed=1)
    zero_adapter(tiny_model, root / "adapters" / "zero")
    db = root / "votes.db"
    done = run_clo("evaluate", "--model", tiny_model, "--adapters-dir", root / "adapters", "--adapters",
                   "base,alpha,zero", "--tasks", "smoke", "--db", db, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    return {"out": json.loads(done.stdout), "db": db, "root": root, "stderr": done.stderr}


def test_smoke_scores_base_and_adapter_offline_and_stores_them(evaluated):
    from clo.evaluate.store import open_store

    out = evaluated["out"]
    assert out["tasks"] == ["smoke_en", "smoke_ko", "smoke_sw"]  # the group expanded, each stored on its own
    scored = [r for r in out["rows"] if r["effect"] == "applied"]
    assert {(r["variant"], r["task"], r["metric"]) for r in scored} == {
        (v, t, m) for v in ("base", "alpha") for t in out["tasks"] for m in ("acc", "acc_norm")}
    for r in scored:
        v = r["value"]  # a share of 12 items, its standard error lm-eval's: the sample standard deviation / √n
        assert 0 <= v <= 1 and round(v * SMOKE_ITEMS, 6).is_integer()
        assert r["stderr"] == pytest.approx(math.sqrt(v * (1 - v) / (SMOKE_ITEMS - 1)))
        assert r["n"] == SMOKE_ITEMS and r["chance"] == pytest.approx(0.25)
        assert r["language"] == r["task"].split("_")[1] and r["num_fewshot"] == 0 and r["item_limit"] is None
        assert r["task_version"] == "1.0" and r["lm_eval"] == "0.4.13"
    alpha = next(r for r in scored if r["variant"] == "alpha")
    assert alpha["adapter_hash"] and len(alpha["adapter_hash"]) == 64 and alpha["source"] is None
    assert out["base_hash"].startswith("sha256:")
    assert out["requests"]["base"] == out["requests"]["alpha"] == 3 * SMOKE_ITEMS * 4  # four choices per item
    store = open_store(str(evaluated["db"]), read_only=True)
    stored = store.benchmarks()
    store.close()
    assert len(stored) == len(out["rows"]) and set(stored["run_id"]) == {out["run_id"]}


def test_every_variant_is_scored_on_the_same_items(evaluated):
    rows = [r for r in evaluated["out"]["rows"] if r["effect"] == "applied"]
    for task in evaluated["out"]["tasks"]:
        hashes = {r["items"] for r in rows if r["task"] == task}
        assert len(hashes) == 1 and None not in hashes
    assert len({r["items"] for r in rows}) == 3  # and the three languages' items differ


def test_an_adapter_with_no_effect_is_caught_and_stored_without_a_score(evaluated):
    out = evaluated["out"]
    assert out["no_effect"] == {"zero": ["smoke_en", "smoke_ko", "smoke_sw"]}  # alpha, which changes the model, is not
    zero = [r for r in out["rows"] if r["variant"] == "zero"]
    assert len(zero) == 3 and all(r["effect"] == "no effect" for r in zero)
    assert all(r["value"] is None and r["metric"] is None and r["n"] is None for r in zero)
    assert "zero" not in out["seconds"]  # never scored
    assert "no effect: identical to the base" in evaluated["stderr"]


def test_the_table_and_a_limited_few_shot_run(evaluated, tiny_model):
    from clo.evaluate.store import open_store

    root = evaluated["root"]
    done = run_clo("evaluate", "--model", tiny_model, "--adapters-dir", root / "adapters", "--adapters", "base,alpha",
                   "--tasks", "smoke_ko", "--limit", "5", "--num-fewshot", "1", "--db", root / "votes.db")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("# "))
    assert "1-shot, first 5 items per task" in lines[head] and lines[head + 1].split()[:2] == ["task", "variant"]
    assert any(line.startswith("smoke_ko") and " alpha " in line and "±" in line for line in lines)
    store = open_store(str(root / "votes.db"), read_only=True)
    rows = store.benchmarks()
    store.close()
    new = rows[rows["item_limit"] == 5]
    assert len(new) == 4 and set(new["n"]) == {5} and set(new["num_fewshot"]) == {1}


def test_a_real_task_offline_is_one_sentence(tiny_model, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")  # nothing cached here
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    done = run_clo("evaluate", "--model", tiny_model, "--adapters", "base", "--tasks", "belebele_kor_Hang",
                   "--db", tmp_path / "votes.db")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "belebele_kor_Hang" in done.stderr and "facebook/belebele" in done.stderr and "unreachable" in done.stderr


def test_an_unknown_task_or_language_is_one_sentence(tiny_model, tmp_path):
    done = run_clo("evaluate", "--model", tiny_model, "--tasks", "belebele_kor", "--db", tmp_path / "v.db")
    assert done.returncode == 2 and "no task 'belebele_kor'" in done.stderr and "belebele_kor_Hang" in done.stderr
    done = run_clo("evaluate", "--model", tiny_model, "--lang", "ja", "--db", tmp_path / "v.db")
    assert done.returncode == 2 and "no default benchmarks for --lang ja" in done.stderr
    assert "belebele_jpn_Jpan" in done.stderr


def test_default_task_names_are_registered_in_lm_eval():
    from clo.evaluate.benchmarks import DEFAULT_TASKS, ENGLISH, SMOKE, default_tasks, task_language
    from clo.evaluate.harness import task_manager

    registered = set(task_manager().all_tasks)  # lm-eval's own registry and assets/benchmarks
    for lang, names in DEFAULT_TASKS.items():
        assert set(names) <= registered, f"{lang}: {set(names) - registered}"
        assert default_tasks(lang)[-1] == ENGLISH
        assert {task_language(n) for n in names} == {lang}
    assert set(SMOKE) | {"smoke"} <= registered


def _row(**kw):
    from clo.evaluate.benchmarks import BenchmarkRow

    row = dict(base_model="m", base_hash="sha256:b", variant="base", adapter_hash=None, source=None,
               task="belebele_kor_Hang", task_version="0.0", language="ko", num_fewshot=0, item_limit=None,
               metric="acc", value=0.27, stderr=0.015, n=900, chance=0.25, items="i", effect="applied",
               lm_eval="0.4.13", run_id="r1", created_utc="2026-01-01T00:00:00+00:00")
    return BenchmarkRow(**{**row, **kw})


def test_benchmark_table_notes_near_chance_and_no_effect():
    import pandas as pd

    from clo.evaluate.benchmarks import NEAR_CHANCE_NOTE, NO_EFFECT_NOTE, benchmark_table

    frame = pd.DataFrame([vars(r) for r in [
        _row(),  # 27.0 ± 1.5: the interval holds 25% -> near chance
        _row(variant="clo-ko", adapter_hash="h1", value=0.624, stderr=0.017),  # clear of chance
        _row(variant="clo-ko", adapter_hash="h1", metric="acc_norm", value=0.5),  # acc only in the table
        _row(variant="sft-ko", adapter_hash="h2", metric=None, value=None, stderr=None, n=None, chance=None,
             items=None, effect="no effect"),
        _row(variant="clo-ko", adapter_hash="h1", task="belebele_eng_Latn", language="en", value=0.7, stderr=0.01,
             created_utc="2026-01-01"),
        _row(variant="clo-ko", adapter_hash="h1", task="belebele_eng_Latn", language="en", value=0.8, stderr=0.01,
             created_utc="2026-02-01"),  # newer: replaces the one above
        _row(task="xcopa_sw", language="sw", value=0.5, stderr=0.02, chance=None),  # chance from the table: 50%
    ]])
    table = benchmark_table(frame, "ko")
    assert list(table.columns) == ["task", "language", "shots", "variant", "accuracy", "n", "chance", "note", "base"]
    got = {(r.task, r.variant): r for r in table.itertuples()}
    assert set(got) == {("belebele_kor_Hang", "base"), ("belebele_kor_Hang", "clo-ko"),
                        ("belebele_kor_Hang", "sft-ko"), ("belebele_eng_Latn", "clo-ko")}  # ko and English only
    assert got["belebele_kor_Hang", "base"].accuracy == "27.0 ± 1.5"
    assert got["belebele_kor_Hang", "base"].note == NEAR_CHANCE_NOTE and got["belebele_kor_Hang", "base"].chance == "25%"
    assert got["belebele_kor_Hang", "clo-ko"].accuracy == "62.4 ± 1.7" and got["belebele_kor_Hang", "clo-ko"].note == ""
    assert got["belebele_kor_Hang", "sft-ko"].note == NO_EFFECT_NOTE and got["belebele_kor_Hang", "sft-ko"].accuracy == "—"
    assert got["belebele_eng_Latn", "clo-ko"].accuracy == "80.0 ± 1.0"
    sw = benchmark_table(frame, "sw")
    assert list(sw["task"]) == ["belebele_eng_Latn", "xcopa_sw"]
    assert sw.set_index("task").loc["xcopa_sw", "chance"] == "50%" and sw.set_index("task").loc["xcopa_sw", "note"] == NEAR_CHANCE_NOTE
    assert benchmark_table(frame.iloc[0:0], None).empty


def _round_trip(store):
    from clo import CLOError

    store.record_benchmark([_row(), _row(variant="clo-ko", adapter_hash="h1", base_model="other", base_hash="sha256:o")])
    frame = store.benchmarks()
    assert len(frame) == 2 and frame.iloc[0]["value"] == pytest.approx(0.27)
    assert list(store.benchmarks(base="sha256:o")["variant"]) == ["clo-ko"]
    assert list(store.benchmarks(base="m")["variant"]) == ["base"]
    store.record_benchmark(**frame.to_dict(orient="records")[0])  # a frame's record copies into a store
    assert len(store.benchmarks()) == 3
    with pytest.raises(CLOError, match="without a score"):
        store.record_benchmark([_row(effect="no effect")])
    with pytest.raises(CLOError, match="in \\[0, 1\\]"):
        store.record_benchmark([_row(value=62.4)])
    assert len(store.benchmarks()) == 3  # nothing of a refused run


def test_benchmark_rows_in_sqlite(store):
    _round_trip(store)


def test_benchmark_rows_in_postgresql(postgres):
    from clo.evaluate.store import open_store

    store = open_store(postgres)
    try:
        _round_trip(store)
    finally:
        store.close()


def test_the_leaderboards_benchmark_table_is_read_again_only_when_a_row_arrives(store, monkeypatch):
    """Every open page refreshes the Leaderboard every 15 s: its Benchmarks table costs one COUNT query until a
    benchmark row is added, as the vote tables cost one until a vote is."""
    from types import SimpleNamespace

    from clo.app.ui.leaderboard import Board

    board = Board(SimpleNamespace(store=store))
    reads = []
    read = store.benchmarks
    monkeypatch.setattr(store, "benchmarks", lambda *a, **kw: reads.append(1) or read(*a, **kw))
    assert board.benchmarks("ko", "sha256:b").empty
    store.record_benchmark([_row()])
    first = board.benchmarks("ko", "sha256:b")
    for _ in range(5):
        assert board.benchmarks("ko", "sha256:b") is first
    assert len(first) == 1 and len(reads) == 2
    store.record_benchmark([_row(variant="clo-ko", adapter_hash="h1", value=0.4)])
    assert list(board.benchmarks("ko", "sha256:b")["variant"]) == ["base", "clo-ko"] and len(reads) == 3

"""`python -m clo replicate` on the tiny random model: the whole run (train, answer, score, plot) and `--resume`,
which trains only what is new and reuses the answers of what it kept. The figures are noise; the plumbing is not."""

import json

import pandas as pd
from conftest import FAKE, ROOT, run_clo


def test_replicate_runs_then_resumes_training_and_asking_only_what_is_new(tiny_model, project, scripted):
    from clo.experiments.replicate import ReplicateConfig, run

    said = []
    cfg = ReplicateConfig(model=str(tiny_model), lang="sw", recipe=str(ROOT / "recipes" / "tiny.yaml"), sizes=[4],
                          seeds=[0], epochs=1, limit=2, max_tokens=4, engine="peft", out_dir=str(project / "runs"))
    first = run(cfg, log=said.append)
    folder = first["folder"]
    adapters = folder / "adapters"
    assert sorted(p.name for p in adapters.iterdir()) == ["clo-sw-n4-s0", "sft-sw-n4-s0"]
    results = first["results"].set_index("variant")
    assert set(results.index) == {"base", "clo-sw-n4-s0", "sft-sw-n4-s0"}
    assert (results.target_asked == 2).all() and (results.english_asked == 4).all()  # 2 held-out prompts + 2 facts
    assert results.loc["clo-sw-n4-s0", "train_s"] > 0 and (folder / "plot.png").stat().st_size > 0
    assert "| clo | 4 |" in first["markdown"] and "| base | — |" in first["markdown"]
    kept = {n: (adapters / n / "adapter_model.safetensors").stat().st_mtime_ns for n in ("clo-sw-n4-s0", "sft-sw-n4-s0")}

    said.clear()  # a second sitting: one more seed, and LoRA on all linear layers beside attention
    again = run(ReplicateConfig(resume=str(folder), sizes=[4], seeds=[0, 1], layers=["attention", "all-linear"],
                                max_tokens=99, engine="peft"), log=said.append)
    assert {n: (adapters / n / "adapter_model.safetensors").stat().st_mtime_ns for n in kept} == kept  # not retrained
    assert "[clo] replicate: sft-sw-n4-s0, clo-sw-n4-s0 already trained, kept" in said
    new = {"clo-sw-n4-s1", "sft-sw-n4-s1", "clo-sw-all-n4-s0", "sft-sw-all-n4-s0", "clo-sw-all-n4-s1", "sft-sw-all-n4-s1"}
    assert set(again["results"].variant) == {"base", *kept, *new}
    assert f"[clo] replicate: {len(new)} variant(s) answer 6 prompts, greedily" in said  # the kept ones are not asked again
    all_linear = json.loads((adapters / "clo-sw-all-n4-s1" / "adapter_config.json").read_text(encoding="utf-8"))
    assert {"gate_proj", "up_proj", "down_proj"} <= set(all_linear["target_modules"])
    assert json.loads((folder / "config.json").read_text(encoding="utf-8"))["max_tokens"] == 4  # the run's, kept
    assert "| clo all-linear | 4 |" in again["markdown"] and again["results"].query("pairs > 0").seed.nunique() == 2

    # a third sitting short of time, on the command line: seed 2 is not trained, so it is left out
    r = run_clo("replicate", "--resume", str(folder), "--sizes", "4", "--seeds", "0,2", "--only-trained",
                "--engine", "peft", cwd=project)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[clo] replicate: sft-sw-n4-s2, clo-sw-n4-s2 not trained yet, left out (--only-trained)" in r.stdout
    assert sorted(p.name for p in adapters.iterdir()) == sorted([*kept, *new])  # nothing trained
    assert "variant(s) answer" not in r.stdout  # every answer reused
    third = pd.read_csv(folder / "results.csv")
    assert set(third.variant) == {"base", *kept}  # this sitting's grid: seed 0, attention
    assert set(pd.read_csv(folder / "answers.csv").variant) == {"base", *kept, *new}  # the other sittings' answers stay

    # a fourth, judged: CLO against SFT of the same size, seed and layers on the held-out prompts, both orders. The
    # scripted judge names the second answer shown whenever neither holds its word: pure position bias, which the
    # two orders turn into ties, and the summary says the win rates mean little
    said.clear()
    judged = run(ReplicateConfig(resume=str(folder), sizes=[4], seeds=[0, 1], layers=["attention", "all-linear"],
                                 only_trained=True, engine="peft", judge_url=scripted.url, judge_model=FAKE),
                 log=said.append)
    table = pd.read_csv(folder / "judge.csv")
    assert len(table) == 4 * 2 and set(table.language) == {"sw", "en"}  # 4 pairings × 2 languages
    assert set(zip(table.clo, table.sft)) == {(f"clo-sw-{p}n4-s{k}", f"sft-sw-{p}n4-s{k}") for p in ("", "all-")
                                              for k in (0, 1)}
    # every pair whose answers differ was asked twice, and every one is a tie
    assert table.both_orders.sum() > 0 and scripted.state["requests"] == 2 * table.both_orders.sum()
    assert (table.wins + table.losses == 0).all() and (table.position_consistency.dropna() == 0).all()
    assert "| CLO vs SFT, judged by scripted-judge |" in judged["markdown"] and "mean little" in judged["markdown"]
    assert (folder / "judge.db").is_file()
    before = scripted.state["requests"]
    run(ReplicateConfig(resume=str(folder), sizes=[4], seeds=[0], only_trained=True, engine="peft",
                        judge_url=scripted.url, judge_model=FAKE), log=said.append)
    assert scripted.state["requests"] == before  # judged before: read from judge.db, not asked again


def test_replicate_refuses_a_size_the_sample_cannot_give_before_making_a_folder(project):
    import pytest

    from clo import CLOError
    from clo.experiments.replicate import ReplicateConfig, run

    with pytest.raises(CLOError, match="--sizes 500: the sample has 160 training pairs"):
        run(ReplicateConfig(model="tiny", sizes=[500], out_dir=str(project / "runs")))
    with pytest.raises(CLOError, match="--layers mlp: choose from attention, all-linear"):
        run(ReplicateConfig(model="tiny", layers=["mlp"], out_dir=str(project / "runs")))
    with pytest.raises(CLOError, match="not a replicate run folder"):
        run(ReplicateConfig(resume=str(project)))
    assert not (project / "runs").exists()

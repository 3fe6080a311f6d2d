"""The paper in miniature: SFT vs CLO on the synthetic two-language world, at several data sizes, on CPU.

For every seed and data size, the project's own training path (`clo.train.run.train`, what `python -m clo train`
runs) fine-tunes the cached English-centric base with SFT and with CLO: same LoRA, same steps, same pairs.
The project's own serving path (the PEFT engine) then answers held-out queries in both languages, greedily, and
each answer is checked exactly:

- target fidelity: answers to target-language queries that are in the target language;
- target accuracy: answers to target-language queries that are exactly right, in the target language;
- English fidelity and English accuracy: the same for the English queries (what the model keeps).

    python -m clo miniature                          # sizes 50,100,200,400 × seeds 0,1,2; table, plot, app adapters
    python -m clo miniature --sizes 50 --seeds 0 --epochs 1 --eval-examples 36    # a smoke run

Writes runs/miniature/<stamp>/{results.csv, summary.md, plot.png} and copies the largest run's SFT and CLO
adapters to models/miniature/adapters/, which the app serves when the hub cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from clo import ROOT, CLOError
from clo.config import option
from clo.files import new_folder
from clo.models.miniature.base import DEFAULT_PATH, base_model
from clo.models.miniature.world import CODE, WORLD, Example, check, generate, solved
from clo.files import copy_whole

APP_ADAPTERS = Path("models") / "miniature" / "adapters"  # what the app serves when the hub is unreachable
# the same base and adapters, built once by `python -c "from clo.experiments.miniature import ship; ship()"` and
# shipped (6.6 MB), so a fresh clone's first start copies them instead of training for minutes
PREBUILT = ROOT / "assets" / "miniature" / "prebuilt"
METRICS = ("target_fidelity", "target_accuracy", "english_fidelity", "english_accuracy")
EVAL_SEED = 1234


@dataclass
class MiniatureConfig:
    """One miniature experiment. Both methods share every setting but the objective."""

    sizes: list[int] = option([50, 100, 200, 400], "Training-pair counts to compare at (the x-axis).")
    seeds: list[int] = option([0, 1, 2], "Seeds (pair selection, LoRA initialisation, data order); several show the spread.")
    methods: list[str] = option(["sft", "clo"], "Objectives, each trained at every size and seed.")
    epochs: float = option(3.0, "Passes over the pairs; the same steps for every method at a size.")
    batch_size: int = option(8, "Pairs per step.")
    learning_rate: float = option(2e-3, "Peak learning rate of the LoRA weights.")
    lora_r: int = option(8, "LoRA rank on q/k/v/o (α = 2r).")
    lam: float = option(0.5, "λ in L_CLO = λ·L_SFT + (1−λ)·L_CL.")
    beta: float = option(0.1, "β of the cross-lingual DPO term.")
    eval_examples: int = option(180, "Held-out queries, each asked in both languages.")
    max_new_tokens: int = option(16, "Longest answer, in tokens (a right one has at most 10, end included).")
    out_dir: str = option("runs/miniature", "Where each experiment's folder is written.")
    base_path: str = option(str(DEFAULT_PATH), "The cached base model (pretrained here when missing).")
    app_adapters: str | None = option(str(APP_ADAPTERS), "Where the largest seed-0 SFT and CLO adapters go for the app.")


def evaluate(engine, variants: list[str], examples: list[Example], max_new_tokens: int, chunk: int = 512) -> pd.DataFrame:
    """Greedy answers of every variant to each example's target and English query, checked; one row per answer."""
    from clo.engines import Request, Sampling

    sampling = Sampling(max_tokens=max_new_tokens, temperature=0.0)
    asks = [(v, ex, lang) for v in variants for ex in examples for lang in (CODE, "en")]
    answers = []
    for start in range(0, len(asks), chunk):
        part = asks[start : start + chunk]
        requests = [Request(v, [{"role": "user", "content": ex.prompt_tgt if lang == CODE else ex.prompt_en}], sampling)
                    for v, ex, lang in part]
        answers += [a.text for a in engine.generate(requests)]
    rows = []
    for (v, ex, lang), text in zip(asks, answers):
        rows.append({"variant": v, "task": ex.task, "query_lang": lang, "answer": text,
                     "answer_lang": WORLD.language_of(text), "correct": check(ex, text, lang), "solved": solved(ex, text)})
    return pd.DataFrame(rows)


def score(answers: pd.DataFrame) -> pd.DataFrame:
    """Per variant: the four metrics (and `target_solved`: right in either language) from checked answers."""
    out = []
    for variant, g in answers.groupby("variant", sort=False):
        tgt, en = g[g.query_lang == CODE], g[g.query_lang == "en"]
        out.append({"variant": variant,
                    "target_fidelity": (tgt.answer_lang == CODE).mean(), "target_accuracy": tgt.correct.mean(),
                    "english_fidelity": (en.answer_lang == "en").mean(), "english_accuracy": en.correct.mean(),
                    "target_solved": tgt.solved.mean()})
    return pd.DataFrame(out)


def summarise(results: pd.DataFrame, metrics=(*METRICS, "target_solved")) -> pd.DataFrame:
    """Mean and standard deviation (`{metric}_sd`) of each metric over seeds, per method and size."""
    g = results.groupby(["method", "pairs"])[list(metrics)]
    mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
    table = mean.join(std, rsuffix="_sd").reset_index()
    table["seeds"] = g.size().values
    return table


def markdown(table: pd.DataFrame) -> str:
    """The summary as a markdown table: mean ± sd over seeds, as percentages."""
    head = "| method | pairs | target fidelity | target accuracy | English fidelity | English accuracy | seeds |"
    lines = [head, "|" + "---|" * 7]
    for _, r in table.sort_values(["pairs", "method"]).iterrows():
        cells = [f"{100 * r[m]:.1f} ± {100 * r[m + '_sd']:.1f}" if r["seeds"] > 1 else f"{100 * r[m]:.1f}" for m in METRICS]
        lines.append(f"| {r['method']} | {int(r['pairs'])} | " + " | ".join(cells) + f" | {int(r['seeds'])} |")
    return "\n".join(lines)


TITLES = {"target_fidelity": "Target fidelity", "target_accuracy": "Target accuracy",
          "english_fidelity": "English fidelity", "english_accuracy": "English accuracy"}


STYLES = {"sft": dict(color="#d62728", marker="s"), "clo": dict(color="#1f77b4", marker="o")}  # method → line style


def plot(table: pd.DataFrame, path: Path, titles: dict[str, str] = TITLES,
         title: str = "CLO vs SFT in miniature (synthetic target language, exact translation)",
         ylabel: str = "% of held-out queries", styles: dict[str, dict] | None = None) -> Path:
    """One panel per metric of `titles` in the paper's style, from `summarise`'s table: data size on the x-axis, one
    line per method of `styles` with its sd over seeds, the base model dashed. `python -m clo replicate` draws its own with it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(titles), figsize=(3.75 * len(titles), 3.6), sharex=True)
    base = table[table.method == "base"]
    pairs = sorted(table[table.method != "base"].pairs.unique())
    for ax, (m, name) in zip(axes, titles.items()):
        for method, style in (styles or STYLES).items():
            t = table[table.method == method].sort_values("pairs")
            if len(t):
                ax.errorbar(t.pairs, 100 * t[m], yerr=100 * t[m + "_sd"], label=method.upper().replace(
                    " ALL-LINEAR", ", all linear"), capsize=3, **style)
        if len(base):
            ax.axhline(100 * base[m].iloc[0], color="gray", linestyle="--", label="base")
        ax.set_title(name)
        if len(pairs) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(pairs, [str(p) for p in pairs])
        ax.set_ylim(-3, 103)
        ax.set_xlabel("training pairs")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def recipe_for(cfg: MiniatureConfig, size: int, seed: int, adapters_dir: Path, runs_dir: Path):
    from clo.config import Recipe

    return Recipe.load(overrides={
        "model.name_or_path": cfg.base_path, "model.load_in_4bit": "false",
        "lora.r": cfg.lora_r, "lora.alpha": 2 * cfg.lora_r, "lora.dropout": 0.0,
        "data.target_lang": CODE, "data.source": "miniature", "data.pairs": size, "data.seed": seed,
        "data.cache_dir": str(runs_dir / "cache"),
        "method.method": ",".join(cfg.methods), "method.lam": cfg.lam, "method.beta": cfg.beta,
        "training.name": f"{{method}}-n{size}-s{seed}", "training.adapters_dir": str(adapters_dir),
        "training.runs_dir": str(runs_dir), "training.epochs": cfg.epochs, "training.batch_size": cfg.batch_size,
        "training.learning_rate": cfg.learning_rate, "training.warmup": 0.1, "training.max_length": 96,
        "training.max_prompt_length": 64, "training.backward": "pair", "training.logging_steps": 5,
        "training.seed": seed,
    })


def run(cfg: MiniatureConfig = MiniatureConfig(), log=print) -> dict:
    """The whole experiment; returns {"folder", "results", "table", "markdown", "plot", "seconds"}."""
    from transformers.utils import logging as hf_logging

    from clo.engines.base import find_adapters
    from clo.engines.peft_engine import PeftEngine
    from clo.train.run import train

    started = time.time()
    if not cfg.sizes or not cfg.seeds or not cfg.methods:
        raise CLOError("the miniature needs at least one size, one seed and one method")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")

    def recipes_in(folder: Path) -> dict:
        return {(seed, size): recipe_for(cfg, size, seed, folder / "adapters", folder / "runs")
                for seed in cfg.seeds for size in cfg.sizes}

    recipes_in(Path(cfg.out_dir) / stamp)  # every setting checked before anything is built or written
    hf_logging.set_verbosity_error()
    base = base_model(cfg.base_path, log=log)  # the cached one, whatever its pretraining settings (in its miniature.json)
    folder = new_folder(cfg.out_dir, stamp)  # its own, never a previous run's
    adapters_dir, recipes = folder / "adapters", recipes_in(folder)
    (folder / "config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")

    for (seed, size), recipe in recipes.items():
        log(f"[clo] miniature: {', '.join(cfg.methods)} on {size} pairs, seed {seed}")
        train(recipe)
    trained_s = time.time() - started

    examples = generate(cfg.eval_examples, seed=EVAL_SEED, split="eval")
    engine = PeftEngine(str(base), find_adapters(adapters_dir))
    variants = ["base"] + sorted(engine.adapters)
    answers = evaluate(engine, variants, examples, cfg.max_new_tokens)
    answers.to_csv(folder / "answers.csv", index=False)
    scores = score(answers)
    meta = {"base": {"method": "base", "pairs": 0, "seed": -1}}
    for name, adapter in engine.adapters.items():
        method, size, seed = name.rsplit("-", 2)
        meta[name] = {"method": method, "pairs": int(size[1:]), "seed": int(seed[1:])}
    results = pd.DataFrame([{**meta[r.variant], **r._asdict()} for r in scores.itertuples(index=False)])
    results.to_csv(folder / "results.csv", index=False)
    table = summarise(results)
    text = markdown(table[table.method != "base"])
    base_row = results[results.method == "base"].iloc[0]
    text += ("\n\nbase model: " + ", ".join(f"{m.replace('_', ' ')} {100 * base_row[m]:.1f}" for m in METRICS)
             + f"; target queries answered rightly in any language: {100 * base_row['target_solved']:.1f}")
    seconds = time.time() - started
    text += (f"\n\n{len(examples)} held-out queries per language; {len(cfg.seeds)} seed(s); "
             f"training {trained_s:.0f} s, whole run {seconds:.0f} s.")
    (folder / "summary.md").write_text(text + "\n", encoding="utf-8")
    plot(table, folder / "plot.png")
    if cfg.app_adapters and 0 in cfg.seeds:
        publish(adapters_dir, max(cfg.sizes), Path(cfg.app_adapters), cfg.methods)
    log(text)
    log(f"[clo] miniature: wrote {folder}/summary.md, results.csv, answers.csv, plot.png ({seconds:.0f} s)")
    return {"folder": folder, "results": results, "table": table, "markdown": text, "plot": folder / "plot.png",
            "seconds": seconds}


def publish(adapters_dir: Path, size: int, dest_dir: Path, methods: list[str]) -> None:
    """Copy the seed-0 adapters of `size` pairs to `dest_dir` as <method>-mini, replacing older ones whole."""
    for method in methods:
        copy_whole(adapters_dir / f"{method}-n{size}-s0", dest_dir / f"{method}-{CODE}")


def install_prebuilt(base_path: Path, adapters_dir: Path, prebuilt: Path = PREBUILT, log=print) -> bool:
    """Copy the shipped base and adapters into place when they were built for the current world; False if not."""
    from clo.models.miniature.base import is_current

    adapters = [prebuilt / "adapters" / f"{m}-{CODE}" for m in MiniatureConfig().methods]
    if not (is_current(prebuilt / "base") and all((a / "adapter_model.safetensors").is_file() for a in adapters)):
        return False
    copy_whole(prebuilt / "base", base_path)  # first: the adapters' files must be newer than the base's
    for adapter in adapters:
        copy_whole(adapter, adapters_dir / adapter.name)
    log(f"[clo] the miniature: copied the shipped base and adapters ({prebuilt}) into {base_path.parent}")
    return True


def ship(dest: Path = PREBUILT) -> Path:
    """Build the app's miniature in a scratch folder and write it to `dest` (assets/miniature/prebuilt) to ship."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="clo-miniature-ship-") as tmp:
        here = os.getcwd()
        os.chdir(tmp)
        try:
            base, adapters = app_models(prebuilt=None)
            for src, to in [(base, dest / "base")] + [(adapters / f"{m}-{CODE}", dest / "adapters" / f"{m}-{CODE}")
                                                        for m in MiniatureConfig().methods]:
                copy_whole(Path(tmp) / src, to)
        finally:
            os.chdir(here)
    return dest


def app_models(base_path: str | Path = DEFAULT_PATH, adapters_dir: str | Path = APP_ADAPTERS, log=print,
               prebuilt: Path | None = PREBUILT) -> tuple[Path, Path]:
    """The miniature base and its SFT and CLO adapters for the app: the shipped copy when it was built for the
    current world (seconds), else built once (a few minutes on CPU).

    Any base built for the current world is accepted; adapters are trained on the largest default size, seed 0.
    The shipped copy is used only at the default paths, where its adapters' manifests name their base.
    """
    from clo.models.miniature.base import is_current
    from clo.train.run import train

    base_path, adapters_dir = Path(base_path), Path(adapters_dir)
    if (prebuilt is not None and not is_current(base_path) and base_path == DEFAULT_PATH
            and install_prebuilt(base_path, adapters_dir, prebuilt, log)):
        return base_path, adapters_dir
    if not is_current(base_path):
        log("[clo] building the miniature once (pretraining the base, then SFT and CLO adapters); later starts reuse it")
        base_model(base_path, log=log)
    cfg = MiniatureConfig(base_path=str(base_path), app_adapters=str(adapters_dir))
    built = (base_path / "model.safetensors").stat().st_mtime
    wanted = [adapters_dir / f"{m}-{CODE}" / "adapter_model.safetensors" for m in cfg.methods]
    if not all(p.is_file() and p.stat().st_mtime >= built for p in wanted):  # missing, or older than the base
        size = max(cfg.sizes)
        scratch = Path(cfg.out_dir) / "app"
        shutil.rmtree(scratch, ignore_errors=True)
        log(f"[clo] training the miniature's SFT and CLO adapters on {size} pairs for the app")
        train(recipe_for(cfg, size, 0, scratch / "adapters", scratch / "runs"))
        publish(scratch / "adapters", size, adapters_dir, cfg.methods)
    return base_path, adapters_dir

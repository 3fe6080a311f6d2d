"""English retention on a real model: does SFT on target-language answers cost the model its English, and does CLO?

For every seed and data size, the project's training path (`clo.train.run.train`, what `python -m clo train` runs)
fine-tunes the model with SFT and with CLO on the same pairs of the shipped sample; the project's serving path (the
PEFT engine) then answers, greedily:

- English prompts: the held-out English sample prompts and a set of plain facts written by the project
  (assets/english/facts.jsonl: capitals, arithmetic, colours, each with its accepted answers);
- the same held-out prompts in the target language.

and reports per method and size: English fidelity (share of the judged answers to English prompts that are English),
facts accuracy (share of the facts answered exactly: an accepted answer appears as a whole word), and target
fidelity. On SmolLM2-135M-Instruct target fidelity is saturated: the base already "answers" a Korean prompt in
Korean, mostly by echoing it, so only the English columns say something; the summary says so.

    python -m clo replicate --model smollm2 --lang ko                          # sizes 32,128, seed 0: ~40 min on 2 cores
    python -m clo replicate --model smollm2 --sizes 8 --epochs 1 --limit 8     # a smoke run, a few minutes

Writes runs/replicate/<model>-<lang>-<stamp>/{results.csv, answers.csv, summary.md, plot.png, adapters/}. The
held-out prompts (4 of every 20 sample rows, all categories) are never trained on.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from clo import ROOT, CLOError
from clo.config import option
from clo.evaluate.langid import ECHO, LOOP, UNKNOWN
from clo.models.table import SAMPLE

FACTS = ROOT / "assets" / "english" / "facts.jsonl"
RECIPE = ROOT / "recipes" / "smollm2.yaml"
METRICS = ("english_fidelity", "facts_accuracy", "target_fidelity")
HELD_OUT_EVERY = 5  # every 5th sample row is held out for evaluation: 40 of 200, four per category


@dataclass
class ReplicateConfig:
    """One English-retention run. Both methods share every setting but the objective."""

    model: str = option("smollm2", "Base model: a shorthand (python -m clo models list), a folder or a hub id.")
    lang: str = option("ko", "Target language; the shipped sample has ko, zh and sw.")
    recipe: str = option(str(RECIPE), "Recipe with the training settings (LoRA, steps, lengths); sizes and seeds override it.")
    sizes: list[int] = option([32, 128], "Training-pair counts (at most 160: the rest of the sample is held out).")
    seeds: list[int] = option([0], "Seeds (pair selection, LoRA initialisation, data order).")
    methods: list[str] = option(["sft", "clo"], "Objectives, each trained at every size and seed.")
    epochs: float | None = option(None, "Passes over the pairs (default: the recipe's).")
    limit: int | None = option(None, "Ask only the first N held-out prompts and N facts (a quick run).")
    max_tokens: int = option(64, "Longest answer, in tokens.")
    out_dir: str = option("runs/replicate", "Where each run's folder is written.")


def split_sample(lang: str) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows) of the shipped sample: every HELD_OUT_EVERY-th row is held out."""
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    if f"prompt_{lang}" not in rows[0]:
        have = sorted(k.removeprefix("prompt_") for k in rows[0] if k.startswith("prompt_") and k != "prompt_en")
        raise CLOError(f"the shipped sample has no {lang!r} translations; it has {', '.join(have)}")
    held = [r for i, r in enumerate(rows) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return [r for i, r in enumerate(rows) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1], held


def read_facts(path: Path = FACTS) -> list[dict]:
    facts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise CLOError(f"{path}, line {n}: not JSON ({e})") from None
        if not isinstance(row.get("prompt"), str) or not row.get("answers"):
            raise CLOError(f"{path}, line {n}: needs a 'prompt' and a list of 'answers'")
        facts.append(row)
    return facts


def correct(answer: str, accepted: list[str]) -> bool:
    """Whether one of the accepted answers appears in `answer` as a whole word (case-insensitive)."""
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", answer, re.I) for a in accepted)


def questions(lang: str, held: list[dict], facts: list[dict], limit: int | None) -> list[dict]:
    """Every prompt asked: held-out prompts in English and in `lang`, and the English facts."""
    held, facts = held[:limit], facts[:limit]
    return ([{"kind": "held-out", "id": r["id"], "query_lang": "en", "prompt": r["prompt_en"], "answers": None} for r in held]
            + [{"kind": "held-out", "id": r["id"], "query_lang": lang, "prompt": r[f"prompt_{lang}"], "answers": None}
               for r in held]
            + [{"kind": f["kind"], "id": f["id"], "query_lang": "en", "prompt": f["prompt"], "answers": f["answers"]}
               for f in facts])


def answer_all(engine, variants: list[str], asked: list[dict], max_tokens: int, detect) -> pd.DataFrame:
    """Greedy answers of every variant to every question; one row per answer with its language (`detect(text,
    query_lang, prompt)`: a language code, unknown, echo or loop)."""
    from clo.engines import Request, Sampling

    sampling = Sampling(max_tokens=max_tokens, temperature=0.0)
    pairs = [(v, q) for v in variants for q in asked]
    answers = engine.generate([Request(v, [{"role": "user", "content": q["prompt"]}], sampling) for v, q in pairs])
    rows = []
    for (v, q), a in zip(pairs, answers):
        if a.error:
            raise CLOError(f"the engine failed to answer {q['id']} for {v}: {a.error}")
        rows.append({"variant": v, "kind": q["kind"], "id": q["id"], "query_lang": q["query_lang"], "prompt": q["prompt"],
                     "answer": a.text, "answer_lang": detect(a.text, q["query_lang"], q["prompt"]).code,
                     "correct": None if q["answers"] is None else correct(a.text, q["answers"])})
    return pd.DataFrame(rows)


def score(answers: pd.DataFrame, lang: str) -> pd.DataFrame:
    """Per variant: English fidelity, facts accuracy, target fidelity (shares), how many answers were judged, and
    how many were echoes of their prompt or loops (never judged)."""
    out = []
    for variant, g in answers.groupby("variant", sort=False):
        en, tgt = g[g.query_lang == "en"], g[g.query_lang == lang]
        judged = lambda part: part[~part.answer_lang.isin([UNKNOWN, ECHO, LOOP])]  # noqa: E731
        en_judged, tgt_judged = judged(en), judged(tgt)
        facts = g[g.correct.notna()]
        out.append({"variant": variant,
                    "english_fidelity": (en_judged.answer_lang == "en").mean() if len(en_judged) else float("nan"),
                    "facts_accuracy": facts.correct.astype(bool).mean() if len(facts) else float("nan"),
                    "target_fidelity": (tgt_judged.answer_lang == lang).mean() if len(tgt_judged) else float("nan"),
                    "english_judged": len(en_judged), "english_asked": len(en),
                    "target_judged": len(tgt_judged), "target_asked": len(tgt),
                    "echoes_or_loops": int(g.answer_lang.isin([ECHO, LOOP]).sum())})
    return pd.DataFrame(out)


def markdown(results: pd.DataFrame) -> str:
    """Mean (± sd over seeds) per method and size, as percentages; the base model first."""
    lines = ["| method | pairs | English fidelity | facts accuracy | target fidelity | seeds |", "|" + "---|" * 6]
    for (method, pairs), g in results.groupby(["method", "pairs"], sort=False):
        cells = []
        for m in METRICS:
            mean, sd = 100 * g[m].mean(), 100 * g[m].std(ddof=1) if len(g) > 1 else 0.0
            cells.append(f"{mean:.1f}" + (f" ± {sd:.1f}" if len(g) > 1 else ""))
        lines.append(f"| {method} | {pairs or '—'} | " + " | ".join(cells) + f" | {g.seed.nunique() if pairs else '—'} |")
    return "\n".join(lines)


def plot(results: pd.DataFrame, path: Path, title: str) -> Path:
    """One panel per metric: data size on the x-axis, one line per method, the base model dashed (the miniature's
    plot, over this run's metrics)."""
    from clo.experiments.miniature import plot as size_plot, summarise

    titles = {"english_fidelity": "English fidelity", "facts_accuracy": "English facts accuracy",
              "target_fidelity": "Target fidelity (saturated)"}
    return size_plot(summarise(results, METRICS), path, titles, title, "% of prompts")


def recipes_for(cfg: ReplicateConfig, train_file: Path, folder: Path) -> dict[tuple[int, int], object]:
    from clo.config import Recipe

    recipes = {}
    for seed in cfg.seeds:
        for size in cfg.sizes:
            overrides = {"model.name_or_path": cfg.model, "data.source": str(train_file), "data.target_lang": cfg.lang,
                         "data.translator": "file", "data.pairs": size, "data.seed": seed,
                         "data.cache_dir": str(folder / "cache"), "method.method": ",".join(cfg.methods),
                         "training.name": f"{{method}}-{{lang}}-n{size}-s{seed}", "training.seed": seed,
                         "training.adapters_dir": str(folder / "adapters"), "training.runs_dir": str(folder / "runs")}
            if cfg.epochs is not None:
                overrides["training.epochs"] = cfg.epochs
            recipes[seed, size] = Recipe.load(cfg.recipe, overrides)
    return recipes


def run(cfg: ReplicateConfig = ReplicateConfig(), log=print) -> dict:
    """The whole run; returns {"folder", "results", "markdown", "plot", "seconds"}."""
    from transformers.utils import logging as hf_logging

    from clo.engines.base import find_adapters
    from clo.engines.peft_engine import PeftEngine
    from clo.languages import lang_code
    from clo.models.table import resolve_model
    from clo.train.run import train

    started = time.time()
    cfg.lang = lang_code(cfg.lang)
    if not cfg.sizes or not cfg.seeds or not cfg.methods:
        raise CLOError("replicate needs at least one size, one seed and one method")
    train_rows, held = split_sample(cfg.lang)
    if max(cfg.sizes) > len(train_rows):
        raise CLOError(f"--sizes {max(cfg.sizes)}: the sample has {len(train_rows)} training pairs once "
                       f"{len(held)} are held out; use sizes up to {len(train_rows)}")
    facts = read_facts()
    cfg.model = resolve_model(cfg.model)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(cfg.out_dir) / f"{Path(cfg.model).name}-{cfg.lang}-{stamp}"
    folder.mkdir(parents=True)
    train_file = folder / "train.jsonl"
    train_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train_rows), encoding="utf-8")
    recipes = recipes_for(cfg, train_file, folder)  # every setting checked before anything trains
    (folder / "config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")
    hf_logging.set_verbosity_error()

    timings = {}
    for (seed, size), recipe in recipes.items():
        log(f"[clo] replicate: {', '.join(cfg.methods)} on {size} pairs, seed {seed}")
        began = time.time()
        train(recipe)
        timings[f"n{size}-s{seed}"] = round(time.time() - began, 1)
    trained_s = time.time() - started

    log("[clo] replicate: answering the held-out prompts and the facts, greedily")
    from clo.evaluate.langid import detect
    engine = PeftEngine(cfg.model, find_adapters(folder / "adapters"))
    variants = ["base"] + sorted(engine.adapters)
    asked = questions(cfg.lang, held, facts, cfg.limit)
    answers = answer_all(engine, variants, asked, cfg.max_tokens,
                         lambda text, lang, prompt: detect(text, lang=lang, also=(cfg.lang,), prompt=prompt))
    answers.to_csv(folder / "answers.csv", index=False)
    scores = score(answers, cfg.lang)
    meta = {"base": {"method": "base", "pairs": 0, "seed": -1}}
    for name in engine.adapters:
        method, _, size, seed = name.rsplit("-", 3)
        meta[name] = {"method": method, "pairs": int(size[1:]), "seed": int(seed[1:])}
    results = pd.DataFrame([{**meta[r["variant"]], **r} for r in scores.to_dict("records")])
    results.to_csv(folder / "results.csv", index=False)
    seconds = time.time() - started
    n_held, n_facts = len(held[: cfg.limit]), len(facts[: cfg.limit])
    first = recipes[cfg.seeds[0], cfg.sizes[0]]
    t = first.training
    text = (markdown(results) + "\n\n"
            f"{Path(cfg.model).name}, target language {cfg.lang}; English prompts: {n_held} held-out sample prompts + "
            f"{n_facts} facts; target prompts: the same {n_held} held-out prompts in {cfg.lang}. Greedy, at most "
            f"{cfg.max_tokens} tokens. Fidelity counts only the answers the language detector could judge "
            f"(base: {int(scores.english_judged.iloc[0])} of {int(scores.english_asked.iloc[0])} English). "
            f"Training: LoRA r {first.lora.r} on {', '.join(first.lora.target_modules)}, {t.epochs:g} epochs, batch "
            f"{t.batch_size}, lr {t.learning_rate:g}, max length {t.max_length}; {len(cfg.seeds)} seed(s). "
            f"Training {trained_s:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}), "
            f"whole run {seconds:.0f} s.\n\n"
            "Target fidelity is saturated: the base model already answers most target-language prompts in that "
            "language, largely by echoing or garbling them, so it does not measure ability in the target language.")
    (folder / "summary.md").write_text(text + "\n", encoding="utf-8")
    plot(results, folder / "plot.png", f"{Path(cfg.model).name}: English retention after SFT vs CLO on {cfg.lang}")
    log(text)
    log(f"[clo] replicate: wrote {folder}/summary.md, results.csv, answers.csv, plot.png ({seconds:.0f} s)")
    return {"folder": folder, "results": results, "markdown": text, "plot": folder / "plot.png", "seconds": seconds}

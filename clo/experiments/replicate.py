"""SFT vs CLO on a real model: does fine-tuning on target-language answers teach the target language, and does it
cost the model its English?

For every seed, data size and set of LoRA layers, the project's training path (`clo.train.run.train`, what
`python -m clo train` runs) fine-tunes the model with SFT and with CLO on the same pairs of the shipped sample; the
engine asked for (auto: vLLM where it runs, else PEFT; on a CPU PEFT was the quicker with many adapters) then
answers, greedily:

- English prompts: the held-out English sample prompts and a set of plain facts written by the project
  (assets/english/facts.jsonl: capitals, arithmetic, colours, each with its accepted answers);
- the same held-out prompts in the target language.

and reports per method, layers and size, mean ± sd over seeds: target fidelity (share of the judged answers to
target-language prompts that are in it), English fidelity, facts accuracy (an accepted answer appears as a whole
word), the echoes and loops (never judged), and each run's training time. Language is judged as everywhere in the
project (clo.evaluate.langid: among the languages in play, echoed sentences left out). On SmolLM2-135M-Instruct
Swahili is the language to look at: its base answers a Swahili prompt in English or in loops (docs/replication.md).

    python -m clo replicate --model smollm2 --lang sw --sizes 32,128 --seeds 0,1,2 --epochs 1   # hours on 2 cores
    python -m clo replicate --resume runs/replicate/<run>  --seeds 0,1,2,3           # more seeds: only new ones train
    python -m clo replicate --model smollm2 --sizes 8 --epochs 1 --limit 8           # a smoke run, a few minutes

Writes runs/replicate/<model>-<lang>-<stamp>/{results.csv, answers.csv, summary.md, plot.png, adapters/}.
`--resume` continues such a folder: adapters already there are kept, answers already given by an unchanged variant
are reused, so a long replication can grow over several sittings (`--only-trained` ends one without training). The
held-out prompts (4 of every 20 sample rows, all categories) are never trained on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from clo import ROOT, CLOError
from clo.config import option
from clo.files import atomic_write
from clo.evaluate.langid import ECHO, LOOP, UNKNOWN
from clo.models.table import SAMPLE

FACTS = ROOT / "assets" / "english" / "facts.jsonl"
RECIPE = ROOT / "recipes" / "smollm2.yaml"
METRICS = ("target_fidelity", "english_fidelity", "facts_accuracy")
HELD_OUT_EVERY = 5  # every 5th sample row is held out for evaluation: 40 of 200, four per category


@dataclass
class ReplicateConfig:
    """One English-retention run. Both methods share every setting but the objective."""

    model: str = option("smollm2", "Base model: a shorthand (python -m clo models list), a folder or a hub id.")
    lang: str = option("sw", "Target language; the shipped sample has ko, zh and sw (SmolLM2's base answers "
                       "Swahili prompts in English: docs/replication.md).")
    recipe: str = option(str(RECIPE), "Recipe with the training settings (LoRA, steps, lengths); sizes and seeds override it.")
    sizes: list[int] = option([32, 128], "Training-pair counts (at most 160: the rest of the sample is held out).")
    seeds: list[int] = option([0, 1, 2], "Seeds (pair selection, LoRA initialisation, data order).")
    methods: list[str] = option(["sft", "clo"], "Objectives, each trained at every size and seed.")
    layers: list[str] = option(["attention"], "LoRA layers: attention (q, k, v, o: the paper's default) and/or "
                               "all-linear (the MLP too: the paper's ablation for low-resource languages).")
    epochs: float | None = option(None, "Passes over the pairs (default: the recipe's).")
    limit: int | None = option(None, "Ask only the first N held-out prompts and N facts (a quick run).")
    max_tokens: int = option(64, "Longest answer, in tokens.")
    engine: str = option("auto", "Engine that answers: auto (vLLM where it runs, else PEFT), vllm or peft.")
    only_trained: bool = option(False, "Train nothing: answer and score the adapters of these sizes, seeds and layers "
                                "already trained (with --resume, a sitting short of time); the rest are left out.")
    judge_url: str | None = option(None, "An LLM judge's OpenAI-compatible server: CLO's answers to the held-out "
                                   "prompts are judged against SFT's of the same size and seed, in both orders.")
    judge_model: str | None = option(None, "The judge's model name at that server.")
    judge_constraint: str = option("auto", "How the judge's replies are read: auto, choice, logprobs or none "
                                   "(as python -m clo judge).")
    out_dir: str = option("runs/replicate", "Where each run's folder is written.")
    resume: str | None = option(None, "Continue this run folder with the sizes, seeds, methods and layers given "
                                "(its model, language, recipe, epochs, limit and answer length are kept); trained "
                                "adapters and answers already there are reused.")


KEPT_ON_RESUME = ("model", "lang", "recipe", "epochs", "limit", "max_tokens")  # what makes a run's numbers comparable


LAYERS = {"attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
          "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def adapter_name(method: str, lang: str, layers: str, size: int, seed: int) -> str:
    """The adapter of one run: `clo-sw-n128-s0`, and `clo-sw-all-n128-s0` with LoRA on all linear layers."""
    return f"{method}-{lang}{'-all' if layers == 'all-linear' else ''}-n{size}-s{seed}"


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
    """Per variant: English fidelity, facts accuracy, target fidelity (shares), how many answers were judged, how
    many were echoes of their prompt or loops (never judged), and `facts_lost`: how many facts the base answers right
    that this variant gets wrong (what broke; NaN without the base's answers)."""
    out = []
    base = answers[(answers.variant == "base") & answers.correct.notna()]
    known = set(base[base.correct.astype(bool)].id)  # the facts the base answers right
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
                    "echoes_or_loops": int(g.answer_lang.isin([ECHO, LOOP]).sum()),
                    "facts_lost": (int(facts[facts.id.isin(known) & ~facts.correct.astype(bool)].shape[0])
                                   if len(base) else float("nan"))})
    return pd.DataFrame(out)


def judge_pairs(cfg: ReplicateConfig, answers: pd.DataFrame, meta: dict, folder: Path, log=print) -> pd.DataFrame:
    """CLO against SFT of the same layers, size and seed, on the held-out prompts in both languages, by the judge at
    `cfg.judge_url` (clo.evaluate.judge: both orders, a disagreement a tie); its verdicts are kept in the run's
    judge.db, so a resumed run asks only new pairs. One row per pairing and language: the win rate of CLO with its
    95% bootstrap interval, W/T/L, and how often the judge's two orders agreed."""
    from clo.evaluate.judge.client import API_KEY_VARIABLE, JudgeClient
    from clo.evaluate.judge.run import Item, judge_items, judge_results
    from clo.evaluate.store import open_store
    from clo.hub import model_fingerprint

    if not (cfg.judge_url and cfg.judge_model):
        raise CLOError("a judged run needs both --judge-url URL and --judge-model NAME")
    held = answers[answers.kind == "held-out"]
    pairings = {}
    for name, m in meta.items():
        if m["method"] == "clo":
            sft = adapter_name("sft", cfg.lang, m["layers"], m["pairs"], m["seed"])
            if sft in meta:
                pairings[name] = (sft, m)
    if not pairings:
        log("[clo] replicate: no CLO adapter has an SFT one of the same size and seed here: nothing to judge")
        return pd.DataFrame()
    client = JudgeClient(cfg.judge_url, cfg.judge_model, api_key=os.environ.get(API_KEY_VARIABLE) or None,
                         constraint=cfg.judge_constraint)
    store = open_store(str(folder / "judge.db"))
    base = (cfg.model, model_fingerprint(cfg.model))
    rows = []
    try:
        for clo, (sft, m) in sorted(pairings.items()):
            mine = held[held.variant == clo].set_index(["query_lang", "prompt"]).answer
            theirs = held[held.variant == sft].set_index(["query_lang", "prompt"]).answer
            items = [Item(lang, prompt, {clo: str(mine[lang, prompt]), sft: str(theirs[lang, prompt])}, base=base)
                     for lang, prompt in mine.index if (lang, prompt) in theirs.index]
            run = judge_items(items, client, store)
            log(f"[clo] replicate: {clo} vs {sft} judged by {client.model}: {run.judged} now, {run.skipped} before, "
                f"{run.identical} identical, {len(run.unreadable)} unreadable replies")
            for lang, r in judge_results(store.votes(), items, client.model, client.protocol.name, clo, sft).items():
                rows.append({"layers": m["layers"], "pairs": m["pairs"], "seed": m["seed"], "language": lang,
                             "clo": clo, "sft": sft, "win_rate": r["rate"], "lower": r["lower"], "upper": r["upper"],
                             "wins": r["wins"], "ties": r["ties"], "losses": r["losses"], "n": r["n"],
                             "position_consistency": r["position_consistency"], "both_orders": r["both_orders"]})
    finally:
        client.close()
        store.close()
    return pd.DataFrame(rows)


def judge_markdown(judged: pd.DataFrame, lang: str, judge: str) -> str:
    """CLO's win rate against SFT by the judge, per layers and size: mean ± sd over seeds in each language, the
    pooled W/T/L, and the share of pairs whose two orders agreed (below 50%: the order decided, not the answers)."""
    lines = [f"| CLO vs SFT, judged by {judge} | pairs | win rate, {lang} prompts | win rate, English prompts | "
             "W / T / L (all seeds) | orders agree | seeds |", "|" + "---|" * 7]
    for (layers, pairs), g in judged.groupby(["layers", "pairs"], sort=True):
        cells = []
        for language in (lang, "en"):
            rates = 100 * g[g.language == language].win_rate.dropna()
            cells.append("—" if rates.empty else f"{rates.mean():.1f}" + (f" ± {rates.std(ddof=1):.1f}" if len(rates) > 1 else ""))
        agree = (g.position_consistency * g.both_orders).sum() / g.both_orders.sum() if g.both_orders.sum() else float("nan")
        lines.append(f"| {label('clo', layers)} | {pairs} | {cells[0]} | {cells[1]} | {g.wins.sum()} / {g.ties.sum()} / "
                     f"{g.losses.sum()} | {100 * agree:.0f}% of {g.both_orders.sum()} | {g.seed.nunique()} |")
    return "\n".join(lines)


def label(method: str, layers: str) -> str:
    return method if method == "base" or layers == "attention" else f"{method} all-linear"


def markdown(results: pd.DataFrame) -> str:
    """Mean (± sd over seeds) per method, layers and size, as percentages; the base model first; each adapter's
    training time (its metrics.json's runtime_s, π_ref's log-probabilities included for CLO)."""
    lines = ["| method | pairs | target fidelity | English fidelity | facts accuracy | facts lost | echoes + loops | "
             "seeds | training (s) |", "|" + "---|" * 9]
    order = results.assign(_base=results.method != "base").sort_values(["_base", "layers", "pairs", "method"])
    for (method, layers, pairs), g in order.groupby(["method", "layers", "pairs"], sort=False):
        cells = []
        for m in METRICS:
            mean, sd = 100 * g[m].mean(), 100 * g[m].std(ddof=1) if len(g) > 1 else 0.0
            cells.append(f"{mean:.1f}" + (f" ± {sd:.1f}" if len(g) > 1 else ""))
        cells.append(f"{g.facts_lost.mean():.1f}")
        asked = g.english_asked.iloc[0] + g.target_asked.iloc[0]
        cells.append(f"{g.echoes_or_loops.mean():.1f} of {asked}")
        seconds = g.train_s.dropna()
        cells += [str(g.seed.nunique()) if pairs else "—", f"{seconds.mean():.0f}" if len(seconds) else "—"]
        lines.append(f"| {label(method, layers)} | {pairs or '—'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


ALL_LINEAR_STYLES = {"sft all-linear": dict(color="#ff9896", marker="s", linestyle=":"),  # beside the miniature's
                     "clo all-linear": dict(color="#aec7e8", marker="o", linestyle=":")}


def plot(results: pd.DataFrame, path: Path, title: str) -> Path:
    """One panel per metric: data size on the x-axis, one line per method (and layers), sd over seeds as error
    bars, the base model dashed (the miniature's plot, over this run's metrics)."""
    from clo.experiments.miniature import STYLES, plot as size_plot, summarise

    titles = {"target_fidelity": "Target fidelity", "english_fidelity": "English fidelity",
              "facts_accuracy": "English facts accuracy"}
    labelled = results.assign(method=[label(m, v) for m, v in zip(results.method, results.layers)])
    return size_plot(summarise(labelled, METRICS), path, titles, title, "% of prompts", styles={**STYLES, **ALL_LINEAR_STYLES})


def recipes_for(cfg: ReplicateConfig, train_file: Path, folder: Path) -> dict[tuple[int, int, str], object]:
    """(seed, size, layers) → the recipe training every method of cfg.methods on those pairs."""
    from clo.config import Recipe

    recipes = {}
    for layers in cfg.layers:
        for seed in cfg.seeds:
            for size in cfg.sizes:
                overrides = {"model.name_or_path": cfg.model, "data.source": str(train_file), "data.target_lang": cfg.lang,
                             "data.translator": "file", "data.pairs": size, "data.seed": seed,
                             "data.cache_dir": str(folder / "cache"), "method.method": ",".join(cfg.methods),
                             "lora.target_modules": ",".join(LAYERS[layers]),
                             "training.name": adapter_name("{method}", "{lang}", layers, size, seed),
                             "training.seed": seed, "training.adapters_dir": str(folder / "adapters"),
                             "training.runs_dir": str(folder / "runs")}
                if cfg.epochs is not None:
                    overrides["training.epochs"] = cfg.epochs
                recipes[seed, size, layers] = Recipe.load(cfg.recipe, overrides)
    return recipes


def trained(folder: Path) -> bool:
    """Whether `folder` holds a whole adapter (what clo.train.run writes last is its manifest)."""
    return (folder / "adapter_model.safetensors").is_file() and (folder / "manifest.json").is_file()


def runtime(adapter: Path) -> float | None:
    """An adapter's training time in seconds, from its metrics.json (None when it does not say)."""
    try:
        return json.loads((adapter / "metrics.json").read_text(encoding="utf-8")).get("runtime_s")
    except (OSError, ValueError):
        return None


def resumed(cfg: ReplicateConfig) -> Path | None:
    """With --resume: the run folder, its settings (KEPT_ON_RESUME) read into `cfg`; else None."""
    if not cfg.resume:
        return None
    folder = Path(cfg.resume)
    saved = folder / "config.json"
    if not saved.is_file():
        raise CLOError(f"--resume {folder}: not a replicate run folder (no config.json there)")
    before = json.loads(saved.read_text(encoding="utf-8"))
    for name in KEPT_ON_RESUME:
        setattr(cfg, name, before[name])
    return folder


def new_folder(cfg: ReplicateConfig) -> Path:
    """A fresh run folder, runs/replicate/<model>-<lang>-<stamp>."""
    from clo.models.table import resolve_model

    cfg.model = resolve_model(cfg.model)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(cfg.out_dir) / f"{Path(cfg.model).name}-{cfg.lang}-{stamp}"
    folder.mkdir(parents=True)
    return folder


def run(cfg: ReplicateConfig = ReplicateConfig(), log=print) -> dict:
    """The whole run; returns {"folder", "results", "markdown", "plot", "seconds"}."""
    from transformers.utils import logging as hf_logging

    from clo.engines import load_engine
    from clo.evaluate.langid import detect
    from clo.languages import lang_code
    from clo.train.run import train

    started = time.time()
    folder = resumed(cfg)
    cfg.lang = lang_code(cfg.lang)
    if not cfg.sizes or not cfg.seeds or not cfg.methods or not cfg.layers:
        raise CLOError("replicate needs at least one size, one seed, one method and one set of layers")
    unknown = sorted(set(cfg.layers) - set(LAYERS))
    if unknown:
        raise CLOError(f"--layers {','.join(unknown)}: choose from {', '.join(LAYERS)}")
    train_rows, held = split_sample(cfg.lang)
    if max(cfg.sizes) > len(train_rows):
        raise CLOError(f"--sizes {max(cfg.sizes)}: the sample has {len(train_rows)} training pairs once "
                       f"{len(held)} are held out; use sizes up to {len(train_rows)}")
    facts = read_facts()
    folder = folder or new_folder(cfg)
    train_file = folder / "train.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train_rows)
    if train_file.exists() and train_file.read_text(encoding="utf-8") != text:
        raise CLOError(f"{train_file} differs from the shipped sample's training rows: the adapters in {folder} were "
                       "trained on other pairs; start a new run instead of --resume")
    atomic_write(train_file, text)
    recipes = recipes_for(cfg, train_file, folder)  # every setting checked before anything trains
    atomic_write(folder / "config.json", json.dumps(asdict(cfg), indent=2))
    hf_logging.set_verbosity_error()

    meta, fresh = {"base": {"method": "base", "layers": "attention", "pairs": 0, "seed": -1}}, set()
    for (seed, size, layers), recipe in recipes.items():
        names = {m: adapter_name(m, cfg.lang, layers, size, seed) for m in cfg.methods}
        meta.update({n: {"method": m, "layers": layers, "pairs": size, "seed": seed} for m, n in names.items()})
        todo = [m for m, n in names.items() if not trained(folder / "adapters" / n)]
        if todo and cfg.only_trained:
            log(f"[clo] replicate: {', '.join(names[m] for m in todo)} not trained yet, left out (--only-trained)")
            for m in todo:
                del meta[names[m]]
            todo = []
        if not todo:
            if kept := [n for n in names.values() if n in meta]:
                log(f"[clo] replicate: {', '.join(kept)} already trained, kept")
            continue
        recipe.method.method = todo
        log(f"[clo] replicate: {', '.join(todo)} ({layers}) on {size} pairs, seed {seed}")
        train(recipe)
        fresh |= {names[m] for m in todo}
    trained_s = time.time() - started

    asked = questions(cfg.lang, held, facts, cfg.limit)
    variants = ["base"] + sorted(n for n in meta if n != "base")
    answers_file, kept = folder / "answers.csv", pd.DataFrame()
    if answers_file.exists():  # reuse: the same questions asked the same way of a variant not retrained since
        before = pd.read_csv(answers_file, keep_default_na=False)
        before["correct"] = [None if c == "" else c == "True" for c in before.correct]
        same = ("max_tokens" in before and (before.max_tokens == cfg.max_tokens).all()
                and set(before.prompt) == {q["prompt"] for q in asked})
        kept = before[~before.variant.isin(fresh)] if same else pd.DataFrame()  # other sittings' variants too
    todo, new = [v for v in variants if kept.empty or v not in set(kept.variant)], pd.DataFrame()
    if todo:
        log(f"[clo] replicate: {len(todo)} variant(s) answer {len(asked)} prompts, greedily")
        engine = load_engine(cfg.engine, model=cfg.model, adapters_dir=str(folder / "adapters"),
                             adapters=[v for v in todo if v != "base"])
        try:
            new = answer_all(engine, todo, asked, cfg.max_tokens,
                             lambda text, lang, prompt: detect(text, lang=lang, also=(cfg.lang,), prompt=prompt))
        finally:
            engine.close()
        new = new.assign(max_tokens=cfg.max_tokens)
    if len(kept):  # judged again: what an older detector said of a kept answer does not stand (langid.VERSION)
        kept = kept.assign(answer_lang=[detect(str(a), lang=q, also=(cfg.lang,), prompt=p).code
                                        for a, q, p in zip(kept.answer, kept.query_lang, kept.prompt)])
    answers = pd.concat([part for part in (kept, new) if len(part)], ignore_index=True)
    atomic_write(answers_file, answers.to_csv(index=False))
    scores = score(answers[answers.variant.isin(variants)], cfg.lang)  # this sitting's grid
    results = pd.DataFrame([{**meta[r["variant"]], **r} for r in scores.to_dict("records")])
    results["train_s"] = [runtime(folder / "adapters" / r.variant) if r.pairs else None for r in results.itertuples()]
    atomic_write(folder / "results.csv", results.to_csv(index=False))
    seconds = time.time() - started
    n_held, n_facts = len(held[: cfg.limit]), len(facts[: cfg.limit])
    first = next(iter(recipes.values()))
    t = first.training
    text = (markdown(results) + "\n\n"
            f"{Path(cfg.model).name}, target language {cfg.lang}; English prompts: {n_held} held-out sample prompts + "
            f"{n_facts} facts; target prompts: the same {n_held} held-out prompts in {cfg.lang}. Greedy, at most "
            f"{cfg.max_tokens} tokens. Fidelity counts only the answers the language detector could judge: echoes "
            f"of the prompt and loops are counted apart. Training: LoRA r {first.lora.r} on "
            f"{' / '.join(cfg.layers)} layers, {t.epochs:g} epochs, batch {t.batch_size}, lr "
            f"{t.learning_rate:g}, max length {t.max_length}; {len(cfg.seeds)} seed(s). Facts lost: of the facts the "
            f"base answers right, how many the adapter gets wrong. Training time: each adapter's, on this machine; "
            f"this sitting trained for {trained_s:.0f} s, whole sitting {seconds:.0f} s.")
    if cfg.judge_url or cfg.judge_model:
        from clo.evaluate.judge.run import CONSISTENCY_FLOOR  # httpx: only a judged run needs it

        judged = judge_pairs(cfg, answers[answers.variant.isin(variants)], meta, folder, log)
        if len(judged):
            atomic_write(folder / "judge.csv", judged.to_csv(index=False))
            agree = (judged.position_consistency * judged.both_orders).sum() / max(1, judged.both_orders.sum())
            text += ("\n\n" + judge_markdown(judged, cfg.lang, cfg.judge_model) + "\n\nEach held-out prompt's two "
                     "answers, asked in both orders; a pair the orders disagree on is a tie (ties count half); win rates "
                     "per seed, mean ± sd over seeds; per-seed 95% bootstrap intervals in judge.csv.")
            if agree < CONSISTENCY_FLOOR:
                text += (f" The judge's two orders agreed on only {100 * agree:.0f}% of the pairs: it mostly follows "
                         "the order shown, so these win rates mean little.")
    atomic_write(folder / "summary.md", text + "\n")
    plot(results, folder / "plot.png", f"{Path(cfg.model).name}: SFT vs CLO on {cfg.lang}")
    log(text)
    log(f"[clo] replicate: wrote {folder}/summary.md, results.csv, answers.csv, plot.png ({seconds:.0f} s)")
    return {"folder": folder, "results": results, "markdown": text, "plot": folder / "plot.png", "seconds": seconds}

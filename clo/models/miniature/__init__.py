"""The paper in miniature: CLO vs SFT on a synthetic two-language world, offline, on CPU, in a few minutes.

- `world`      English, an invented target language with an exact translation, tasks with checkable answers
- `base`       the English-centric base model: a few-million-parameter Llama pretrained here, cached

The experiment itself (SFT vs CLO at several data sizes and seeds, table + plot) is clo.experiments.miniature:

    python -m clo miniature                 # or: from clo.experiments.miniature import run

This module registers the miniature in clo.models.table (shorthand `miniature`, the app's offline fallback) with
everything the rest of the project reads there: its folder (the shipped copy, else built), its held-out queries as
examples, its invented language "mini", its word-based language detector, the data source `--data miniature`, its
adapters for the app, the Data tab's lexicon and the Train tab's experiment. Nothing heavy is imported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clo import CLOError
from clo.languages import Language
from clo.models.miniature.world import CODE, NAME
from clo.models.table import DataSource, Experiment, OfflineModel, register

POOL = 1000  # synthetic training-side examples that --data miniature draws its pairs from
EXAMPLES = 60  # held-out queries the app offers as examples


def is_miniature(model: str | Path) -> bool:
    """Whether `model` is a folder holding the miniature's base (it carries a miniature.json)."""
    return (Path(model) / "miniature.json").is_file()


def load_pairs(cfg) -> tuple[list[dict], dict]:
    """`--data miniature`: synthetic tasks, each already in both languages (the translation is exact)."""
    from clo.models.miniature.world import WORLD, generate

    try:
        pool = generate(max(cfg.pairs, POOL), seed=0, split="train")
    except ValueError as e:
        raise CLOError(f"--data miniature: {e}") from None
    rows = [{k: v for k, v in ex.row().items() if k != "task"} | {"where": f"miniature {ex.id}"} for ex in pool]
    return rows, {"source": "miniature", "world": WORLD.fingerprint, "pool": len(pool)}


def detect_words(text: str):
    """The language of a text written only in the miniature's vocabulary, by its words: "mini" or "en" with
    confidence 1, "unknown" for words of both; None for any other text (a word outside the vocabulary, or no word)."""
    from clo.evaluate.langid import UNKNOWN, Detection
    from clo.models.miniature.world import WORLD, tokens

    words = [w for w in tokens(text) if w.isalpha()]
    if not words or not all(w in WORLD.lexicon or w in WORLD.inverse for w in words):
        return None
    lang = WORLD.language_of(text)
    return Detection(lang, 1.0) if lang in (CODE, "en") else Detection(UNKNOWN, 0.0)


def lexicon():
    """The word list: each English word, its invented counterpart, and whether it moves to the clause end."""
    import pandas as pd

    from clo.models.miniature.world import HEADS, WORLD

    return pd.DataFrame([{"English": en, NAME: tgt, "clause-final": "yes" if en in HEADS else ""}
                         for en, tgt in WORLD.lexicon.items()])


def _experiment_arguments(model: str, adapters_dir: str) -> list[str]:
    """Serving the miniature: the run starts from the served base and replaces its served adapters; else it leaves
    models/miniature/adapters as they are."""
    if is_miniature(model):
        return ["--base-path", model, "--app-adapters", adapters_dir]
    return ["--no-app-adapters"]


@dataclass(frozen=True, kw_only=True)
class Miniature(OfflineModel):
    def make(self, out: Path, **options) -> Path:
        """At the default folder: the shipped copy with its adapters (seconds), else built once; elsewhere the base."""
        from clo.models.miniature.base import DEFAULT_PATH, base_model

        if Path(out) == DEFAULT_PATH:
            from clo.experiments.miniature import app_models

            return app_models()[0]
        return base_model(out)

    def made(self, out: Path) -> bool:
        from clo.models.miniature.base import is_current

        return is_current(Path(out))

    def owns(self, folder: Path) -> bool:
        return is_miniature(folder)

    def describe(self, folder: str | Path) -> str:
        try:
            size = json.loads((Path(folder) / "miniature.json").read_text(encoding="utf-8"))["parameters"] / 1e6
        except (OSError, ValueError, KeyError, TypeError):
            size = 1.6
        return (f"the **synthetic miniature** (`{folder}`): a {size:.1f}M-parameter English-centric model and its SFT "
                "and CLO adapters, trained here on an invented target language (its lexicon is in the Data tab); it "
                "knows nothing but its small synthetic tasks")

    def examples(self) -> dict[str, list[tuple[str, str]]]:
        """Held-out queries (target language, English), never trained on."""
        from clo.experiments.miniature import EVAL_SEED
        from clo.models.miniature.world import generate

        return {CODE: [(ex.prompt_tgt, ex.prompt_en) for ex in generate(EXAMPLES, seed=EVAL_SEED, split="eval")]}

    def detect(self, text: str):
        return detect_words(text)

    def misfit(self, recipe) -> str | None:
        if recipe.data.target_lang != CODE:
            return (f"the miniature's word-level tokenizer knows only English and its invented language: train it with "
                    f"target language {CODE!r} and data 'miniature', not {recipe.data.target_lang!r}")
        return None

    def notes(self):
        return ("The miniature's language: lexicon and word order",
                "The synthetic target language of `python -m clo miniature`. Every English word has one invented word; "
                "numbers and punctuation are shared. Word order: a clause that opens with a verb or question word moves "
                "it to the clause's end (*reverse the words : cat dog* → *the words reverse : cat dog*, then word by "
                "word).", lexicon())

    def app_adapters(self, log=print) -> Path:
        """Its SFT and CLO adapters, trained for the base at its default folder (copied from the shipped copy, else
        trained once)."""
        from clo.experiments.miniature import app_models

        return app_models(log=log)[1]


MINIATURE = register(Miniature(
    name="miniature",
    title="the synthetic miniature",
    description="a 1.6M-parameter English-centric model and its SFT and CLO adapters, trained here on an invented "
                "target language (mini); it knows nothing but its small synthetic tasks (word lists, sums, colours, homes)",
    folder="miniature/base",
    license="Apache-2.0 (this project)",
    credits="built by this project (clo.models.miniature)",
    origin="shipped in assets/miniature/prebuilt (built here by clo.models.miniature when the code no longer matches it)",
    languages=(Language(CODE, NAME, None, None, "synthetic"),),  # no translator knows it: its pairs are --data miniature
    data_sources=(DataSource("miniature", CODE, load_pairs,
                             "synthetic tasks with an exact translation, in the miniature's language only"),),
    adapters="models/miniature/adapters",
    generation=(("max_tokens", 32),),
    # the experiment's own recipe at its largest size (clo.experiments.miniature): the recipe's defaults (1e-4, one
    # epoch of 200 pairs, 50 steps) left L_CL at 0.69 and the answers as the base's (docs/app.md, the Train tab)
    train_defaults=(("data.pairs", 400), ("training.epochs", 3.0), ("training.batch_size", 8),
                    ("training.learning_rate", 2e-3), ("training.warmup", 0.1), ("lora.r", 8), ("lora.alpha", 16),
                    ("lora.dropout", 0.0), ("training.max_length", 96), ("training.max_prompt_length", 64),
                    ("training.backward", "pair"), ("training.logging_steps", 5)),  # a right answer has at most 10 tokens; a wrong one stops at 32, not 256
    app_fallback=1,  # the app's fallback of last resort: made in seconds, from the shipped copy
    experiment=Experiment(
        command="miniature",
        title="The paper in miniature: SFT vs CLO on a synthetic language, on CPU",
        about="Runs `python -m clo miniature`: an English-centric miniature base (pretrained once, cached) is fine-tuned "
              "with SFT and with CLO on 50, 100, 200 and 400 pairs of an invented language with an exact translation, "
              "and both are checked on held-out tasks in both languages. A few minutes on two CPU cores; "
              "when the app serves the miniature, its served `sft-mini` and `clo-mini` are replaced by the new run's "
              "when it ends (votes on the old and new versions stay apart).",
        button="Run the miniature experiment",
        arguments=_experiment_arguments,
        replaces_served=is_miniature,
    ),
))

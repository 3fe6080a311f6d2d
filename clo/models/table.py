"""The one table of offline models: every model that needs no hub, what it is and what the app needs to serve it.

    python -m clo models list                     # what is known, and what is made here
    python -m clo models get smollm2 [--out DIR]  # make models/smollm2-135m-instruct (once)
    python -m clo generate --model smollm2 "What is the capital of France?"
    python app.py --model miniature               # any shorthand works wherever a model is given

    from clo.models.table import MODELS, entry_for, locate_model, resolve_model
    resolve_model("smollm2")   # -> "models/smollm2-135m-instruct", made on first use
    locate_model("smollm2")    # -> clo.hub.Source of that folder (what loading a base model asks first)
    resolve_model("gpt2")      # -> "gpt2" (anything not in the table passes through unchanged)
    entry_for("models/miniature/base").examples()   # a folder an entry made names its entry

Each entry (an `OfflineModel`) says: its shorthand, what it is in plain words (parameters, honest limits), how to
make its folder under models/, its example prompts per language, the languages it brings (registered with
clo.languages), its own language detector where a statistical one cannot judge, the data sources it brings
(clo.train.data looks them up in DATA_SOURCES), the adapters the app serves with it, and whether it is the app's offline
fallback. General code reads the table and never names an entry; an entry plugs in with `register`. The entries
(clo.models.smollm2, .miniature, .tiny) register themselves when the package clo.models loads, so importing this
module through it always finds them. The table imports none of them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from clo import ROOT, CLOError
from clo.files import copy_whole, read_text, same_files
from clo.hub import Source, locate
from clo.languages import Language
from clo.languages import register as register_language

if TYPE_CHECKING:
    import pandas as pd

    from clo.config import DataConfig, Recipe
    from clo.evaluate.langid import Detection

MANIFEST = "manifest.json"
SAMPLE = ROOT / "assets" / "sample" / "pairs.jsonl"  # the shipped sample: English pairs with ko, zh, sw translations

Examples = dict[str, list[tuple[str, str]]]  # per target language: (prompt in it, its English original)


@dataclass(frozen=True)
class DataSource:
    """A named source of cross-lingual pairs a model brings (`--data NAME`), already in its one target language."""

    name: str
    language: str  # the target language its rows are in (their prompt_tgt / response_tgt)
    load: Callable[["DataConfig"], tuple[list[dict], dict]]  # DataConfig -> (rows, source description), as clo.train.data
    about: str  # one line for help texts


@dataclass(frozen=True)
class Experiment:
    """A command the Train tab offers with a model (its own button), run as `python -m clo <command> --out-dir F ...`."""

    command: str  # the subcommand of `python -m clo`
    title: str  # the Train tab's accordion
    about: str  # markdown under it
    button: str
    arguments: Callable[[str, str], list[str]]  # (served model, adapters folder) -> the options that fit them
    replaces_served: Callable[[str], bool]  # served model -> whether a finished run replaced its served adapters


@dataclass(frozen=True, kw_only=True)
class OfflineModel:
    """An entry of the table. Subclasses say how their folder is made (`make`, `made`) and may override the rest."""

    name: str  # the shorthand: --model NAME
    title: str  # what it is called: "SmolLM2-135M-Instruct"
    description: str  # plain words: parameters, how it was made, honest limits
    folder: str  # its folder under models/
    license: str
    credits: str
    origin: str  # where its weights come from, for `models list`
    languages: tuple[Language, ...] = ()  # languages no table has, that it brings (clo.languages.register)
    data_sources: tuple[DataSource, ...] = ()
    adapters: str | None = None  # the adapters folder the app serves with it when --adapters-dir is not given
    shipped_adapters: str | None = None  # adapters shipped in the repository (relative to it), copied into `adapters`
    # (name, sha256 of adapter_model.safetensors, why) of adapters once shipped, then withdrawn: a copy of one that
    # the app made in `adapters` is removed there (byte-identical: the app's copy, never the user's own adapter)
    withdrawn_adapters: tuple[tuple[str, str, str], ...] = ()
    # the app serves it when the hub is unreachable and the asked model is not cached: of those whose folder is made,
    # the highest rank (a real model over the synthetic one); the lowest rank is made in seconds, so always served
    app_fallback: int = 0
    experiment: Experiment | None = None
    # project-written example prompts (JSONL: prompt_en and prompt_<lang>, relative to the repository) shown before
    # the sample's in the languages they have: the ones where this model's adapters differ visibly
    examples_first: str | None = None
    # the app's sampling for it (fields of clo.engines.Sampling: max_tokens, repetition_penalty, stop), chosen so its
    # answers stay short and readable at demo speed on this machine; --max-tokens and --repetition-penalty win
    generation: tuple[tuple[str, object], ...] = ()
    # the Train tab's default run on it (recipe overrides, dotted: "training.learning_rate"), chosen so that run visibly
    # changes the adapter within minutes on this machine; the recipe's own defaults fill the rest
    train_defaults: tuple[tuple[str, object], ...] = ()

    @property
    def path(self) -> Path:
        return models_dir() / self.folder

    def make(self, out: Path, **options) -> Path:
        """Make the folder `out` (called when `made(out)` is False); returns it."""
        raise NotImplementedError

    def made(self, out: Path) -> bool:
        """Whether `out` is a finished folder of this model."""
        return (Path(out) / "config.json").is_file()

    def owns(self, folder: Path) -> bool:
        """Whether the existing `folder` holds this model (a marker or manifest in it; here: its own folder, made)."""
        return Path(folder).resolve() == self.path.resolve() and self.made(folder)

    def describe(self, folder: str | Path) -> str:
        """What the app's page says it runs on (markdown)."""
        return f"**{self.title}** (`{folder}`): {self.description}"

    def examples(self) -> Examples:
        """Example prompts per language: `examples_first` first, then the shipped sample (assets/sample/pairs.jsonl)."""
        out = sample_examples()
        if self.examples_first:
            first = read_examples(ROOT / self.examples_first)
            out = {lang: first.get(lang, []) + [e for e in pairs if e not in first.get(lang, [])]
                   for lang, pairs in out.items()} | {lang: pairs for lang, pairs in first.items() if lang not in out}
        return out

    def sampling(self) -> dict:
        """Its generation defaults as Sampling's keyword arguments ({} when it has none)."""
        return dict(self.generation)

    def detect(self, text: str) -> "Detection | None":
        """Its own judgement of the language of `text`, or None to leave it to the statistical detector."""
        return None

    def misfit(self, recipe: "Recipe") -> str | None:
        """Why an adapter trained by `recipe` could not work on this model, or None."""
        return None

    def notes(self) -> tuple[str, str, "pd.DataFrame"] | None:
        """(title, markdown, table) the Data tab shows about its language, or None."""
        return None

    def app_adapters(self, log=print) -> Path | None:
        """The adapters folder the app serves with it, filled with the shipped adapters when the repository has
        them (copied once, again when they change); None when it has no folder of its own."""
        if self.adapters is None:
            return None
        dest = Path(self.adapters)
        dest.mkdir(parents=True, exist_ok=True)
        shipped = ROOT / self.shipped_adapters if self.shipped_adapters else None
        if shipped is not None and shipped.is_dir():
            for src in sorted(p for p in shipped.iterdir() if (p / "adapter_config.json").is_file()):
                if not same_files(src, dest / src.name):
                    copy_whole(src, dest / src.name)
                    log(f"[clo] {self.name}: copied the shipped adapter {src.name} into {dest}")
        for name, sha256, why in self.withdrawn_adapters:
            weights = dest / name / "adapter_model.safetensors"
            if weights.is_file() and hashlib.sha256(weights.read_bytes()).hexdigest() == sha256:
                shutil.rmtree(dest / name)
                log(f"[clo] {self.name}: removed {dest / name}, the app's copy of an adapter the project withdrew: {why}")
        return dest


def read_manifest(folder: Path) -> dict:
    """The folder's manifest.json as a dict; {} when it is missing, unreadable or not an object."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


# ---- the table ----

MODELS: dict[str, OfflineModel] = {}
DATA_SOURCES: dict[str, DataSource] = {}  # --data NAME -> the source an entry brings (clo.train.data reads it)


def register(entry: OfflineModel) -> OfflineModel:
    """Add `entry` to the table, its languages to clo.languages and its data sources to DATA_SOURCES."""
    if entry.name in MODELS:
        raise CLOError(f"model shorthand {entry.name!r} is registered already")
    for source in entry.data_sources:
        if source.name in DATA_SOURCES or source.name == "sample":
            raise CLOError(f"data source {source.name!r} is registered already")
    for lang in entry.languages:
        register_language(lang)
    MODELS[entry.name] = entry
    DATA_SOURCES.update({source.name: source for source in entry.data_sources})
    return entry


def models_dir() -> Path:
    return Path("models")  # relative to the project folder, like adapters/ and runs/


def known() -> str:
    """The known shorthands by name, for a message: `miniature (...); smollm2 (SmolLM2-135M-Instruct: 135M ...); ...`."""
    return "; ".join(f"{m.name} ({m.title}: {m.description})" for m in _by_name())


def _by_name() -> list[OfflineModel]:
    return [MODELS[name] for name in sorted(MODELS)]  # registration order depends on what was imported first


def lookup(name: str) -> OfflineModel:
    if name not in MODELS:
        raise CLOError(f"unknown model shorthand {name!r}; the known ones are: {known()}")
    return MODELS[name]


def canonical(name: str) -> str:
    """The folder a known shorthand stands for (`smollm2` -> `models/smollm2-135m-instruct`), without making it;
    anything else unchanged. Recipes store this, so an adapter records the folder its engine will serve."""
    if isinstance(name, str) and name in MODELS and not Path(name).exists():
        return str(MODELS[name].path)
    return name


def resolve_model(name: str) -> str:
    """A local folder for a known shorthand (made on first use), anything else unchanged (a hub id, a path).

    An existing path of that name wins over the shorthand; the shorthand's own folder under models/, named but
    not made yet, is made too."""
    if not isinstance(name, str) or not name or Path(name).exists():
        return name
    if name in MODELS:
        return str(get(name))
    for entry in MODELS.values():
        if Path(name).resolve() == entry.path.resolve():
            get(entry.name)
            return name
    return name


def locate_model(name: str, flag: str = "--model") -> Source:
    """A base model given as anything a user may type, classified (`clo.hub.locate`): a shorthand of the table
    becomes its folder first (`resolve_model`, made on first use); a path or hub id is checked as it is."""
    return locate(resolve_model(name), kind="model", flag=flag)


def entry_for(model: str | Path | None) -> OfflineModel | None:
    """The entry a model reference stands for: its shorthand, a folder an entry made (anywhere: its marker or
    manifest says so), or an entry's own folder not made yet; None for anything else (a hub id, another folder)."""
    if not model:
        return None
    name = str(model)
    if name in MODELS and not Path(name).exists():
        return MODELS[name]
    path = Path(name).expanduser()
    if path.is_dir():
        return next((e for e in MODELS.values() if e.owns(path)), None)
    return next((e for e in MODELS.values() if not path.exists() and path.resolve() == e.path.resolve()), None)


def app_fallback() -> OfflineModel:
    """The entry the app serves when the hub is unreachable and the asked model is not cached here: the
    highest-ranked one whose folder is made, else the lowest-ranked (made in seconds)."""
    ranked = fallbacks()
    return next((e for e in ranked if e.made(e.path)), ranked[-1])


def fallbacks() -> list[OfflineModel]:
    """The entries the app may fall back to, the most wanted first."""
    return sorted((e for e in MODELS.values() if e.app_fallback), key=lambda e: -e.app_fallback)


def get(name: str, out: str | Path | None = None, **options) -> Path:
    """The folder of model `name`, made if missing (`options` go to its `make`: for smollm2 `cache` and `source`,
    auto, hub or gguf). Returns the folder; a second call returns at once."""
    entry = lookup(name)
    out = Path(out).expanduser() if out else entry.path
    if entry.made(out):
        return out
    return entry.make(out, **options)


def sample_examples() -> Examples:
    """Per language, (target-language prompt, its English original) pairs from the shipped sample."""
    return read_examples(SAMPLE)


def read_examples(path: Path) -> Examples:
    """Per language, (target-language prompt, its English original) from a JSONL file of prompt_en and
    prompt_<lang> fields (a row may leave a language out)."""
    out: Examples = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            english = row["prompt_en"]
        except (ValueError, KeyError, TypeError):
            raise CLOError(f"{path}, line {n}: not a JSON object with a prompt_en field") from None
        for key in sorted(k for k in row if k.startswith("prompt_") and k != "prompt_en"):
            out.setdefault(key.removeprefix("prompt_"), []).append((row[key], english))
    return dict(sorted(out.items()))


def experiments() -> list[OfflineModel]:
    """The entries that bring an experiment for the Train tab, by name."""
    return [e for e in _by_name() if e.experiment is not None]


def listing() -> list[dict]:
    """One row per known model: its shorthand, description, where it comes from, and the folder if made here."""
    rows = []
    for m in _by_name():
        rows.append({"name": m.name, "title": m.title, "description": m.description, "license": m.license,
                     "origin": m.origin, "hub_id": getattr(m, "hub_id", None),
                     "package": getattr(m, "requirement", None), "folder": str(m.path) if m.made(m.path) else None})
    return rows



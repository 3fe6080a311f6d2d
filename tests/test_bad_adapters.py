"""Where adapter folders, model paths and saved files enter: each bad one is one sentence naming it, and nothing
half-written stays behind (a full disk while saving, a run killed mid-save)."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_clo

from clo import CLOError
from clo.engines.base import Request, Sampling, find_adapters, read_adapter
from clo.files import OWNER, remove_stale, staging, staging_folder
from clo.hub import explain_missing, locate
from clo.models.tiny import build_random_adapter, build_tiny_model

GREEDY = Sampling(max_tokens=6)
CHAT = [{"role": "user", "content": "What is 2 plus 2?"}]


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    """A valid LoRA adapter for tiny_model (copy it before spoiling it)."""
    return build_random_adapter(tiny_model, tmp_path_factory.mktemp("adapters") / "good")


@pytest.fixture(scope="module")
def narrow_adapter(tmp_path_factory) -> Path:
    """An adapter of another shape (hidden size 64, tiny_model has 128) with no manifest and no base recorded."""
    root = tmp_path_factory.mktemp("narrow")
    folder = build_random_adapter(build_tiny_model(root / "tiny64", hidden_size=64), root / "adapters" / "narrow")
    (folder / "manifest.json").unlink()
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def spoiled(adapter: Path, tmp_path: Path, file: str, content) -> Path:
    folder = shutil.copytree(adapter, tmp_path / "adapters" / "bad")
    (folder / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


# ---- 1. a model path that is an adapter folder, or no model at all ----

def test_adapter_folder_as_model_names_its_base(adapter, tiny_model):
    with pytest.raises(CLOError) as e:
        locate(str(adapter), kind="model", flag="--model")
    assert str(e.value) == (f"{adapter} is a LoRA adapter folder, not a base model; its base is {tiny_model}; pass that "
                            "as --model and serve the adapter from its folder's parent with --adapters-dir (or --adapters NAME)")


def test_adapter_folder_as_model_through_the_cli(adapter, project):
    r = run_clo("train", "--model", str(adapter), "--max-steps", "1", cwd=project)  # in this process (conftest)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{adapter} is a LoRA adapter folder, not a base model" in r.stderr
    assert not (project / "adapters").exists() and not (project / "runs").exists()


def test_an_adapter_that_transformers_loads_on_its_base_is_refused(adapter, tiny_model, tmp_path, monkeypatch):
    """A hub adapter repo (here a folder passed as one): transformers would load its base with the adapter merged in."""
    from clo import load
    from clo.config import ModelConfig
    from clo.hub import Source

    repo = shutil.copytree(adapter, tmp_path / "org--adapter")
    for f in tiny_model.glob("tokenizer*"):
        shutil.copy(f, repo)
    monkeypatch.setattr(load, "locate_model", lambda name, **kw: Source(name, "model", "--model", False, True))
    with pytest.raises(CLOError) as e:
        load.load_base(ModelConfig(name_or_path=str(repo)), verbose=False)
    assert str(e.value) == (f"{repo} is a LoRA adapter, not a base model; its base is {tiny_model}; "
                            "pass the base as --model and serve the adapter from --adapters-dir")


def test_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(CLOError, match=r"^model folder .*empty has no config.json, so it is not a model saved by transformers"):
        locate(str((tmp_path / "empty").mkdir() or tmp_path / "empty"), kind="model", flag="--model")
    assert locate(str(tmp_path), kind="dataset", flag="--data").local  # other kinds are not model folders


def test_a_local_load_failure_is_said_whole(tmp_path):
    source = locate(str(tmp_path), kind="translation model", flag="--data.translator_model")
    with pytest.raises(CLOError) as e, explain_missing(source):
        raise ValueError("Couldn't instantiate the backend tokenizer from one of: \n(1) a file\n(2) a slow tokenizer")
    assert str(e.value).endswith("one of: (1) a file (2) a slow tokenizer")


# ---- 2. an adapter of another shape ----

def test_adapter_of_another_shape_is_one_sentence(tiny_model, narrow_adapter):
    from clo.engines.peft_engine import PeftEngine

    with pytest.raises(CLOError) as e:
        PeftEngine(str(tiny_model), [read_adapter(narrow_adapter)])
    message = str(e.value)
    assert message.startswith(f"adapter {narrow_adapter.resolve()} does not fit {tiny_model}: its lora_A for layer "
                              "model.layers.0.self_attn.")
    assert "has shape [8, 64], the base model needs [8, 128], so it was trained for another base model" in message
    assert "\n" not in message and "size mismatch" not in message


def test_hot_loading_another_shape_keeps_serving(tiny_model, adapter, narrow_adapter):
    from clo.engines.peft_engine import PeftEngine

    engine = PeftEngine(str(tiny_model), [read_adapter(adapter)])
    try:
        before = engine.generate([Request("base", CHAT, GREEDY), Request("good", CHAT, GREEDY)])
        with pytest.raises(CLOError, match="was trained for another base model"):
            engine.add_adapter(narrow_adapter)
        assert set(engine.variants()) == {"base", "good"}
        after = engine.generate([Request("base", CHAT, GREEDY), Request("good", CHAT, GREEDY)])
        assert [a.text for a in after] == [a.text for a in before]
    finally:
        engine.close()


def test_peft_size_mismatch_is_translated_and_undone(tiny_model, narrow_adapter, monkeypatch):
    """Should PEFT itself meet the mismatch (check_fits skipped), its dump is one sentence and the base stays bare."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from clo.engines import peft_engine

    monkeypatch.setattr(peft_engine, "check_fits", lambda *a: None)
    engine = peft_engine.PeftEngine(str(tiny_model))
    try:
        with pytest.raises(CLOError) as e:
            engine.add_adapter(narrow_adapter)
        assert "does not fit" in str(e.value) and "trained for another base model" in str(e.value)
        assert "\n" not in str(e.value)
        assert not any(isinstance(m, BaseTunerLayer) for m in engine.base.modules())
        assert engine.generate([Request("base", CHAT, GREEDY)])[0].tokens > 0
    finally:
        engine.close()


# ---- 3. adapter_config.json and manifest.json that are not what they claim ----

@pytest.mark.parametrize("file, content, says", [
    ("adapter_config.json", "[1, 2]", "holds a JSON list, not an object"),
    ("adapter_config.json", "42", "holds a JSON number, not an object"),
    ("adapter_config.json", b"\x00\x01\x02binary", "is not valid JSON"),
    ("adapter_config.json", b"\xff\xfe{}", "is not UTF-8 text (byte 0)"),
    ("adapter_config.json", "{", "is not valid JSON (Expecting property name enclosed in double quotes, line 1 column 2)"),
    ("adapter_config.json", '{"target_modules": ["q_proj"]}', "r (the LoRA rank) must be a whole number ≥ 1, got null"),
    ("adapter_config.json", '{"r": "8", "target_modules": ["q_proj"]}', 'r (the LoRA rank) must be a whole number ≥ 1, got "8"'),
    ("adapter_config.json", '{"r": 8}', "target_modules must be a list of layer names"),
    ("adapter_config.json", '{"r": 8, "target_modules": [1]}', "target_modules must be a list of layer names"),
    ("adapter_config.json", '{"r": 8, "target_modules": "q_proj", "peft_type": "IA3"}', "only LoRA adapters"),
    ("adapter_config.json", '{"r": 8, "target_modules": ["q"], "base_model_name_or_path": 3}', "base_model_name_or_path must be a string"),
    ("manifest.json", "not json", "is not valid JSON"),
    ("manifest.json", '"clo"', "holds a JSON string, not an object"),
    ("manifest.json", "[]", "holds a JSON list, not an object"),
    ("manifest.json", '{"base_model": 7}', "base_model must be an object with a name_or_path string"),
    ("manifest.json", '{"target_lang": ["ko"]}', "target_lang must be a string"),
    ("adapter_model.safetensors", b"\x10\x00", "is not a readable safetensors file"),
])
def test_bad_adapter_files_are_one_sentence_naming_the_file(adapter, tmp_path, file, content, says):
    folder = spoiled(adapter, tmp_path, file, content)
    with pytest.raises(CLOError) as e:
        find_adapters(folder.parent)
    assert str(e.value).startswith((f"{folder / file}", f"cannot read {folder / file}")), str(e.value)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_manifest_may_name_its_base_as_a_string(adapter, tmp_path, tiny_model):
    folder = spoiled(adapter, tmp_path, "manifest.json", json.dumps({"base_model": "org/other", "method": "clo"}))
    found = read_adapter(folder)
    assert (found.base_model, found.method, found.rank) == ("org/other", "clo", 8)


# ---- 4. a full disk while saving ----

def _peft_model(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                          LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    "safetensors",
])
@pytest.mark.parametrize("existing", [False, True])
def test_full_disk_while_saving_is_one_sentence_and_writes_nothing(project, tiny_model, monkeypatch, error, existing):
    from safetensors import SafetensorError

    from clo.config import Recipe
    from clo.train.data import build_pairs
    from clo.train.run import save_adapter

    recipe = Recipe.load(overrides={"model.name_or_path": str(tiny_model), "data.pairs": 2})
    model = _peft_model(tiny_model)
    dest = Path("adapters") / "clo-ko"
    if existing:
        dest.mkdir(parents=True)
        (dest / "adapter_config.json").write_text("{}")
    if error == "safetensors":
        error = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                'message: "No space left on device" })')

    def full_disk(path, **kw):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "adapter_model.safetensors").write_bytes(b"half")
        raise error

    monkeypatch.setattr(model, "save_pretrained", full_disk)
    with pytest.raises(CLOError) as e:
        save_adapter(model, dest, recipe, "clo", build_pairs(recipe.data), "lora-float32", {}, [], overwrite=True)
    assert str(e.value) == ("no space left on device while writing adapters/clo-ko; nothing was written; "
                            "free space and run again")
    assert sorted(p.name for p in Path("adapters").iterdir()) == (["clo-ko"] if existing else [])
    if existing:
        assert sorted(p.name for p in dest.iterdir()) == ["adapter_config.json"]


def test_other_save_errors_are_not_called_a_full_disk(project, tiny_model, monkeypatch):
    from clo.config import Recipe
    from clo.train.data import build_pairs
    from clo.train.run import save_adapter

    recipe = Recipe.load(overrides={"model.name_or_path": str(tiny_model), "data.pairs": 2})
    model = _peft_model(tiny_model)
    monkeypatch.setattr(model, "save_pretrained", lambda path, **kw: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(PermissionError):
        save_adapter(model, Path("adapters/clo-ko"), recipe, "clo", build_pairs(recipe.data), "lora-float32", {}, [], False)
    assert list(Path("adapters").iterdir()) == []


def test_overwrite_replaces_whole_and_leaves_no_hidden_folder(project, tiny_model):
    from clo.config import Recipe
    from clo.train.data import build_pairs
    from clo.train.run import save_adapter

    recipe = Recipe.load(overrides={"model.name_or_path": str(tiny_model), "data.pairs": 2})
    model, data, dest = _peft_model(tiny_model), build_pairs(recipe.data), Path("adapters/clo-ko")
    save_adapter(model, dest, recipe, "clo", data, "lora-float32", {"n": 1}, [], overwrite=False)
    save_adapter(model, dest, recipe, "clo", data, "lora-float32", {"n": 2}, [], overwrite=True)
    assert [p.name for p in Path("adapters").iterdir()] == ["clo-ko"]
    assert json.loads((dest / "metrics.json").read_text()) == {"n": 2} and not (dest / OWNER).exists()
    assert os.stat(dest).st_mode & 0o755 == 0o755  # not mkdtemp's 0700


# ---- 5. staging folders a killed run left ----

def _killed_mid_save(root: Path, kind: str = "tmp") -> Path:
    """A real process that makes a staging folder with a half-written adapter in it, then dies by SIGKILL."""
    code = ("import os, signal, sys; from clo.files import staging_folder; "
            f"f = staging_folder({str(root)!r}, 'clo-ko', {kind!r}); (f / 'clo-ko').mkdir(); "
            "(f / 'clo-ko' / 'adapter_config.json').write_text('{}'); print(f, flush=True); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL
    return Path(r.stdout.strip())


def test_a_killed_runs_staging_folder_is_removed_at_the_next_engine_start(tmp_path, adapter):
    root = tmp_path / "adapters"
    shutil.copytree(adapter, root / "good")
    left = _killed_mid_save(root)
    assert left.name.startswith(".tmp-clo-ko-") and (left / OWNER).is_file()
    mine = staging_folder(root, "clo-en")  # this process is alive: its folder stays
    assert [a.name for a in find_adapters(root)] == ["good"]
    assert not left.exists() and mine.exists()


def test_an_old_folder_moved_aside_is_put_back_when_its_replacement_never_came(tmp_path):
    root = tmp_path / "adapters"
    aside = _killed_mid_save(root, "old")
    assert remove_stale(root) == [aside]
    assert sorted(p.name for p in root.iterdir()) == ["clo-ko"]
    assert (root / "clo-ko" / "adapter_config.json").read_text() == "{}"


def test_staging_marks_name_the_process_not_just_its_pid(tmp_path):
    reused = staging_folder(tmp_path, "a")  # this pid, but another process's start time: pid reuse
    (reused / OWNER).write_text(json.dumps({"pid": os.getpid(), "started": 1.0}))
    garbled = staging_folder(tmp_path, "b")
    (garbled / OWNER).write_text("{")
    unmarked_old, unmarked_new = tmp_path / ".old-c-1234abcd", tmp_path / ".tmp-d-5678"  # the user's, or older code's
    (unmarked_old / "adapter_config.json").parent.mkdir()
    (unmarked_old / "adapter_config.json").write_text("{}")
    unmarked_new.mkdir()
    os.utime(unmarked_old, (time.time() - 7200, time.time() - 7200))
    (tmp_path / ".cache").mkdir()  # not a staging folder
    removed = remove_stale(tmp_path)
    assert [p.name for p in removed] == [reused.name]  # only a whole mark of a process that is gone proves it ours
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".cache", garbled.name, unmarked_old.name,
                                                                 unmarked_new.name])


def test_train_cleans_up_before_it_starts(project, tiny_model, monkeypatch):
    import clo.train.run

    left = _killed_mid_save(project / "adapters")
    monkeypatch.setattr(clo.train.run, "setup", lambda *a: (_ for _ in ()).throw(CLOError("stop here")))
    recipe = clo.train.run.Recipe.load(overrides={"model.name_or_path": str(tiny_model)})
    with pytest.raises(CLOError, match="stop here"):
        clo.train.run.train(recipe)
    assert not left.exists() and list((project / "adapters").iterdir()) == []


def test_hidden_folders_are_never_served(tmp_path, adapter, tiny_model):
    from clo.engines.peft_engine import PeftEngine

    root = tmp_path / "adapters"
    with staging(root, "clo-ko") as stage:  # a complete adapter still in its staging folder, this process alive
        shutil.copytree(adapter, stage / "clo-ko")
        assert find_adapters(root) == []
        engine = PeftEngine(str(tiny_model))
        try:
            with pytest.raises(CLOError, match="is a hidden folder"):
                engine.add_adapter(stage / "clo-ko", name=stage.name)
        finally:
            engine.close()
    assert not stage.exists()


def test_miniature_publish_stages_in_a_marked_folder(tmp_path, adapter, monkeypatch):
    from clo.experiments import miniature as experiment

    src = tmp_path / "runs"
    shutil.copytree(adapter, src / "clo-n8-s0")
    dest_dir, seen = tmp_path / "app", []
    copy = shutil.copytree

    def watched(a, b, **kw):
        seen.append((Path(b).parent.name, (Path(b).parent / OWNER).is_file()))
        return copy(a, b, **kw)

    monkeypatch.setattr(experiment.shutil, "copytree", watched)
    experiment.publish(src, 8, dest_dir, ["clo"])
    assert seen[0][0].startswith(".tmp-clo-") and seen[0][1]
    assert [p.name for p in dest_dir.iterdir()] == [f"clo-{experiment.CODE}"]


# ---- 6. sampling settings no engine can use ----

@pytest.mark.parametrize("fields, says", [
    ({"temperature": float("nan")}, "temperature must be a finite number ≥ 0"),
    ({"temperature": float("inf")}, "temperature must be a finite number ≥ 0"),
    ({"temperature": -0.5}, "temperature must be a finite number ≥ 0"),
    ({"top_p": float("nan")}, "top_p must be a number in (0, 1]"),
    ({"top_p": float("inf")}, "top_p must be a number in (0, 1]"),
    ({"top_p": 0.0}, "top_p must be a number in (0, 1]"),
    ({"max_tokens": 2.5}, "max_tokens must be ≥ 1 and at most 1,000,000, a whole number of tokens, got 2.5"),
    ({"max_tokens": 10**12}, "max_tokens must be ≥ 1 and at most 1,000,000"),
    ({"max_tokens": True}, "max_tokens must be ≥ 1 and at most 1,000,000"),
    ({"max_tokens": "256"}, "max_tokens must be ≥ 1 and at most 1,000,000"),
    ({"max_tokens": 0}, "max_tokens must be ≥ 1 and at most 1,000,000"),
    ({"seed": 1.5}, "seed must be a whole number ≥ 0 or unset"),
])
def test_sampling_check_names_the_field(fields, says):
    with pytest.raises(CLOError) as e:
        Sampling(**fields).check()
    assert str(e.value).startswith(says)


def test_sampling_check_accepts_sane_settings():
    Sampling(max_tokens=1_000_000, temperature=0.7, top_p=1, seed=0).check()
    Sampling(max_tokens=torch.tensor(5).item(), temperature=0).check()

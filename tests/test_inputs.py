"""What a user gives is judged by what it is: a copied base model serves its adapters, a LoRA value or layer name
that cannot work is one sentence before anything is written, a short data file says why, a UTF-16 recipe is read."""

import codecs
import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, arithmetic_rows, run_clo, write_jsonl

from clo import CLOError
from clo.config import DataConfig, Recipe
from clo.train.data import build_pairs
from clo.engines.base import read_adapter, same_model
from clo.models.tiny import build_random_adapter, build_tiny_model


def recipe_for(model: Path, root: Path, **overrides) -> Recipe:
    """A one-step SFT run on the sample, everything it writes under `root`."""
    base = {"model.name_or_path": str(model), "method.method": "sft", "data.pairs": 4, "training.batch_size": 2,
            "training.max_steps": 1, "training.max_length": 96, "training.max_prompt_length": 48,
            "training.adapters_dir": str(root / "adapters"), "training.runs_dir": str(root / "runs"),
            "data.cache_dir": str(root / "cache")}
    return Recipe.load(overrides=base | overrides)


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory) -> Path:
    """An adapter trained on tiny_model by `clo.train.run` (so its manifest is the one a real run writes)."""
    from clo.train.run import train

    root = tmp_path_factory.mktemp("trained")
    (folder,) = train(recipe_for(tiny_model, root))
    return folder


@pytest.fixture(scope="module")
def copies(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """(an exact copy of tiny_model at another path, a tiny model of the same shape built with another seed)."""
    root = tmp_path_factory.mktemp("bases")
    return shutil.copytree(tiny_model, root / "tiny_copy"), build_tiny_model(root / "tiny_seed1", seed=1)


# ---- 13. a base model is what it is, not where it lies ----

def test_fingerprint_follows_the_content_not_the_path(tiny_model, copies, tmp_path):
    from clo.hub import model_fingerprint

    copy, other = copies
    assert model_fingerprint(str(tiny_model)).startswith("sha256:")
    assert model_fingerprint(str(copy)) == model_fingerprint(str(tiny_model))
    assert model_fingerprint(str(other)) != model_fingerprint(str(tiny_model))  # same shape, other weights
    changed = shutil.copytree(tiny_model, tmp_path / "changed")
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**config, "rope_theta": 1234.0}))
    assert model_fingerprint(str(changed)) != model_fingerprint(str(tiny_model))
    assert model_fingerprint(str(tmp_path / "nowhere")) is None


def test_an_adapter_records_its_base_fingerprint(trained, tiny_model):
    from clo.hub import model_fingerprint

    base = json.loads((trained / "manifest.json").read_text())["base_model"]
    assert base["name_or_path"] == str(tiny_model)
    assert base["fingerprint"] == model_fingerprint(str(tiny_model))
    assert read_adapter(trained).base_fingerprint == base["fingerprint"]


def test_a_copy_of_the_base_serves_the_adapter_and_another_model_does_not(trained, copies):
    from clo.engines.peft_engine import PeftEngine

    copy, other = copies
    engine = PeftEngine(str(copy), [read_adapter(trained)])
    assert set(engine.variants()) == {"base", trained.name}
    engine.close()
    engine = PeftEngine(str(other))
    with pytest.raises(CLOError) as e:
        engine.add_adapter(trained)
    assert str(e.value) == (f"adapter {trained.name} was trained on {read_adapter(trained).base_model}, but this engine "
                            f"serves {other}, whose config or weights differ from those it was trained on")
    engine.close()


def test_a_base_remade_in_place_no_longer_serves_the_adapter(trained, tiny_model, tmp_path):
    """The same path with other weights is another model: the recorded fingerprint decides, not the path."""
    moved = tmp_path / "adapters" / trained.name
    shutil.copytree(trained, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["base_model"]["name_or_path"] = str(tmp_path / "base")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    build_tiny_model(tmp_path / "base", seed=2)
    adapter = read_adapter(moved)
    assert not same_model(adapter.base_model, str(tmp_path / "base"), adapter.base_fingerprint)
    assert same_model(adapter.base_model, str(tiny_model), adapter.base_fingerprint)


def test_an_adapter_without_a_fingerprint_is_compared_by_its_base(tiny_model, copies, tmp_path):
    """Adapters saved before fingerprints (the shipped ones) keep working: their recorded base decides."""
    copy, other = copies
    old = build_random_adapter(tiny_model, tmp_path / "old")
    adapter = read_adapter(old)
    assert adapter.base_fingerprint is None
    assert same_model(adapter.base_model, str(tiny_model)) and same_model(adapter.base_model, str(copy))
    assert not same_model(adapter.base_model, str(other))
    assert not same_model("meta-llama/Meta-Llama-3-8B-Instruct", str(tiny_model))


@pytest.mark.parametrize("folder", [str(p.relative_to(ROOT)) for p in sorted(
    [*(ROOT / "assets" / "smollm2" / "adapters").glob("*/adapter_config.json"),
     *(ROOT / "assets" / "miniature" / "prebuilt" / "adapters").glob("*/adapter_config.json")])])
def test_shipped_adapters_are_still_matched_by_their_recorded_path(folder):
    adapter = read_adapter((ROOT / folder).parent)
    assert adapter.base_fingerprint is None
    assert same_model(adapter.base_model, adapter.base_model)  # the path the app serves them from


def test_the_app_may_train_for_a_copy_of_its_base(tiny_model, copies):
    from clo.app.jobs import misfit

    copy, other = copies
    assert misfit(Recipe.load(overrides={"model.name_or_path": str(tiny_model)}), str(copy)) is None
    assert "an adapter trained on another model could not be served here" in misfit(
        Recipe.load(overrides={"model.name_or_path": str(tiny_model)}), str(other))


# ---- 14. values and names that cannot work, and files read like the others ----

@pytest.mark.parametrize(
    "key, value, message",
    [
        ("lora.alpha", -4, "lora.alpha must be > 0 (the update is scaled by α / r), got -4"),
        ("lora.alpha", 0, "lora.alpha must be > 0 (the update is scaled by α / r), got 0"),
        ("lora.r", 0, "lora.r (the LoRA rank) must be ≥ 1, got 0"),
        ("lora.r", -8, "lora.r (the LoRA rank) must be ≥ 1, got -8"),
        ("lora.dropout", 1.0, "lora.dropout must be in [0, 1), got 1.0"),
        ("lora.dropout", -0.1, "lora.dropout must be in [0, 1), got -0.1"),
        ("training.save_steps", -1, "training.save_steps must be ≥ 0 (0 = no checkpoints), got -1"),
        ("training.seed", -1, "training.seed must be a whole number from 0 to 2^32 − 1, got -1"),
    ],
)
def test_impossible_values_are_one_sentence(key, value, message):
    with pytest.raises(CLOError) as e:
        Recipe.load(overrides={key: value})
    assert str(e.value) == message


def test_negative_alpha_on_the_command_line_writes_nothing(project, tiny_model):
    r = run_clo("train", "--model", str(tiny_model), "--pairs", "4", "--max-steps", "1", "--lora.alpha=-4",
                cwd=project)  # in this process (conftest): test_train runs the real command
    assert r.returncode == 2, r.stderr[-2000:]
    assert "lora.alpha must be > 0" in r.stderr and "got -4" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in project.iterdir()) == []


@pytest.mark.parametrize("targets, named", [("nonexistent_proj", "'nonexistent_proj' matches"),
                                            ("q_proj,v_prj", "'v_prj' matches")])
def test_unknown_target_modules_name_the_real_layers_and_leave_no_run_folder(tiny_model, tmp_path, targets, named):
    from clo.train.run import train

    with pytest.raises(CLOError) as e:
        train(recipe_for(tiny_model, tmp_path, **{"lora.target_modules": targets}))
    msg = str(e.value)
    assert msg.startswith(f"lora.target_modules: {named} no layer of {tiny_model}; the layers LoRA can adapt there are named ")
    assert "\n" not in msg
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(msg.rsplit("named ", 1)[1].split(", "))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "adapters").exists()


def test_too_few_rows_says_how_many_duplicates_were_dropped(project):
    rows = arithmetic_rows(11)
    write_jsonl(project / "dups.jsonl", rows + [{**r, "id": f"again-{r['id']}"} for r in rows[:4]])
    with pytest.raises(CLOError) as e:
        build_pairs(DataConfig(source=str(project / "dups.jsonl"), pairs=12))
    assert str(e.value) == (f"{project / 'dups.jsonl'}: asked for 12 pairs but only 11 usable rows exist (15 rows, of which "
                            "4 repeat an earlier row's prompt and answer and were dropped); lower --pairs")


def test_too_few_rows_without_duplicates_says_nothing_more(project):
    write_jsonl(project / "few.jsonl", arithmetic_rows(3))
    with pytest.raises(CLOError) as e:
        build_pairs(DataConfig(source=str(project / "few.jsonl"), pairs=5))
    assert str(e.value).endswith("only 3 usable rows exist; lower --pairs")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_a_utf16_or_utf32_recipe_with_a_bom_is_read(tmp_path, encoding):
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}.get(encoding, b"")
    (tmp_path / "wide.yaml").write_bytes(bom + "# 한국어\ndata:\n  pairs: 7\n  target_lang: sw\n".encode(encoding))
    recipe = Recipe.load(tmp_path / "wide.yaml")
    assert (recipe.data.pairs, recipe.data.target_lang) == (7, "sw")


def test_a_utf16_recipe_without_a_bom_is_refused_like_a_data_file(tmp_path):
    (tmp_path / "nobom.yaml").write_bytes("data:\n  pairs: 7\n".encode("utf-16-le"))
    (tmp_path / "nobom.jsonl").write_bytes((json.dumps(arithmetic_rows(1)[0]) + "\n").encode("utf-16-le"))
    with pytest.raises(CLOError) as recipe:
        Recipe.load(tmp_path / "nobom.yaml")
    with pytest.raises(CLOError) as data:
        build_pairs(DataConfig(source=str(tmp_path / "nobom.jsonl"), pairs=1))
    assert str(recipe.value).replace("nobom.yaml", "X") == str(data.value).replace("nobom.jsonl", "X")
    assert "byte-order mark" in str(recipe.value)

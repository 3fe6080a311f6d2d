"""Recipes, dataclass configuration and the command-line options built from it."""

import dataclasses
from pathlib import Path

import pytest

from clo import CLOError
from clo.__main__ import build_parser
from clo.config import SECTIONS, Recipe, check_run_name

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert {p.stem for p in RECIPES} >= {"demo", "paper", "tiny"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_round_trips(path, tmp_path):
    recipe = Recipe.load(path)
    recipe.save(tmp_path / "again.yaml")
    assert Recipe.load(tmp_path / "again.yaml") == recipe


def test_demo_and_paper_settings():
    demo = Recipe.load(RECIPES[[p.stem for p in RECIPES].index("demo")])
    assert demo.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (demo.data.target_lang, demo.data.pairs, demo.method.method) == ("ko", 200, ["clo", "sft"])
    paper = Recipe.load(RECIPES[[p.stem for p in RECIPES].index("paper")])
    assert (paper.data.pairs, paper.method.lam, paper.data.source) == (6400, 0.5, "OpenAssistant/oasst1")
    assert paper.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert paper.data.translator_model == "facebook/m2m100_1.2B"


def test_overrides_beat_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  target_lang: sw\n  pairs: 10\n")
    recipe = Recipe.load(path, {"data.pairs": "20", "method.method": "clo,dpo"})
    assert (recipe.data.target_lang, recipe.data.pairs, recipe.method.method) == ("sw", 20, ["clo", "dpo"])


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("training:\n  learning_rat: 1e-4\n", "unknown key 'training.learning_rat'"),
        ("optimizer:\n  lr: 1\n", "unknown section 'optimizer'"),
        ("data:\n  pairs: many\n", "'many' is not a valid int"),
        ("data:\n  target_lang: xx\n", "unknown language code 'xx'"),
        ("data:\n  target_lang: en\n", "must not be English"),
        ("method:\n  method: [clo, ppo]\n", "unknown method 'ppo'"),
        ("method:\n  lam: 1.5\n", "lam must be in [0, 1]"),
        ("model:\n  load_in_4bit: maybe\n", "'maybe' is not one of auto, true, false"),
        ("training:\n  name: ../escape\n", "invalid run name"),
        ("training:\n  max_prompt_length: 600\n", "must be below max_length"),
        ("data: [1, 2\n", "not valid YAML"),
        ("data:\n  pairs: 5\n  seed: [oops\n", "line 4"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, yaml_text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(CLOError) as e:
        Recipe.load(path)
    assert fragment in str(e.value)


@pytest.mark.parametrize("name", ["a/b", "..", "x..y", ".hidden", "", "a b"])
def test_run_names_are_plain_folder_names(name):
    with pytest.raises(CLOError, match="invalid run name"):
        check_run_name(name)


def test_one_folder_per_method():
    recipe = Recipe.load(overrides={"method.method": "clo,sft", "training.name": "exp"})
    assert [recipe.adapter_name(m) for m in ("clo", "sft")] == ["exp-clo", "exp-sft"]
    assert Recipe.load(overrides={"data.target_lang": "sw"}).adapter_name("clo") == "clo-sw"


def test_every_field_is_a_command_line_option():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"--{section}.{f.name}" in text, f"--{section}.{f.name}"
    for alias in ("--model", "--lang", "--method", "--pairs", "--max-steps", "--name", "--adapters-dir", "--overwrite"):
        assert alias in text


def test_short_aliases_parse(tmp_path):
    from clo.__main__ import recipe_from_args

    args = build_parser().parse_args(["train", "--model", "m/x", "--lang", "sw", "--method", "sft", "--pairs", "7",
                                      "--max-steps", "3", "--name", "run1", "--adapters-dir", str(tmp_path), "--overwrite"])
    r = recipe_from_args(args)
    assert (r.model.name_or_path, r.data.target_lang, r.method.method, r.data.pairs) == ("m/x", "sw", ["sft"], 7)
    assert (r.training.max_steps, r.training.name, r.training.adapters_dir, r.training.overwrite) == (3, "run1", str(tmp_path), True)

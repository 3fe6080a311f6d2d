"""Bad input where data files and config values enter: one clear sentence each, and nothing left behind.

Grouped by edge: data files, recipe files, language codes, over-long pairs, NaN and infinities.
"""

import codecs
import dataclasses
import json
import math
from pathlib import Path

import pytest
from conftest import arithmetic_rows, write_jsonl

from clo import CLOError
from clo.__main__ import build_parser, main
from clo.config import SECTIONS, DataConfig, Recipe, base_type
from clo.train.data import MAX_FIELD_CHARS, build_pairs, load_english
from clo.languages import LANGUAGES, language


def _refused(project: Path, name: str, content: bytes | str, **cfg) -> str:
    """The one-sentence message for building pairs from a file with `content`; asserts nothing was cached."""
    path = project / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(CLOError) as e:
        build_pairs(DataConfig(source=str(path), **({"pairs": 1} | cfg)))
    assert not (project / "cache" / "datasets").exists()
    msg = str(e.value)
    assert "\n" not in msg and name in msg
    return msg


# ---- data files ----

@pytest.mark.parametrize("header", ["id,prompt_en,response_en", "prompt_en,response_en,id"])
def test_csv_from_excel_with_bom_and_crlf(project, header):
    """A byte-order mark and CRLF ends (Excel's "CSV UTF-8"): the first column is read under its own name."""
    cols = header.split(",")
    lines = [header] + [",".join({"id": f"q{i}", "prompt_en": f"Question {i}?", "response_en": f"Answer {i}."}[c] for c in cols)
                        for i in range(3)]
    path = project / "excel.csv"
    path.write_bytes(codecs.BOM_UTF8 + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    rows, _ = load_english(DataConfig(source=str(path)))
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    assert [r["prompt_en"] for r in rows] == ["Question 0?", "Question 1?", "Question 2?"]
    assert rows[2]["response_en"] == "Answer 2."  # no stray "\r"


def test_jsonl_and_json_with_bom(project):
    rows = arithmetic_rows(3)
    (project / "bom.jsonl").write_bytes(codecs.BOM_UTF8 + "".join(json.dumps(r) + "\n" for r in rows).encode())
    (project / "bom.json").write_bytes(codecs.BOM_UTF8 + json.dumps(rows).encode())
    for name in ("bom.jsonl", "bom.json"):
        data = build_pairs(DataConfig(source=str(project / name), pairs=3))
        assert sorted(r["id"] for r in data.rows) == ["r0", "r1", "r2"]
        assert {r["prompt_tgt"] for r in data.rows} == {r["prompt_ko"] for r in rows}


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_utf16_and_utf32_with_bom_are_read(project, encoding):
    rows = arithmetic_rows(2)
    (project / "wide.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding=encoding)
    got, _ = load_english(DataConfig(source=str(project / "wide.jsonl")))
    assert [r["prompt_tgt"] for r in got] == [r["prompt_ko"] for r in rows]


def test_utf16_without_bom_is_refused(project):
    text = json.dumps(arithmetic_rows(1)[0]) + "\n"
    msg = _refused(project, "nobom.jsonl", text.encode("utf-16-le"))
    assert "not text" in msg and "byte-order mark" in msg and "save it as UTF-8" in msg


def test_latin1_bytes_name_the_file_and_line(project):
    lines = [json.dumps(r) for r in arithmetic_rows(2)] + ['{"prompt_en": "caf\xe9", "response_en": "ok"}']
    msg = _refused(project, "latin.jsonl", "\n".join(lines).encode("latin-1"))
    assert msg.startswith(f"{project / 'latin.jsonl'}, line 3: not UTF-8 text (byte 0xe9")


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.json", "blank.jsonl"])
def test_empty_file(project, name):
    assert "no usable rows (the file is empty)" in _refused(project, name, "\n \n" if name.startswith("blank") else b"")


@pytest.mark.parametrize("line, kind", [("[1, 2]", "an array"), ("3", "a number"), ('"text"', "a string"), ("null", "null")])
def test_a_json_line_that_is_not_an_object(project, line, kind):
    text = json.dumps(arithmetic_rows(1)[0]) + "\n" + line + "\n"
    assert f"line 2: expected a JSON object {{...}}, got {kind}" in _refused(project, "bad.jsonl", text)


def test_csv_missing_column_names_the_columns_found(project):
    msg = _refused(project, "cols.csv", "id,question,answer\nq1,What?,That.\n")
    assert "line 2: field 'prompt_en' is missing; this row has 'id', 'question', 'answer'" in msg
    assert "--data.prompt_field" in msg


def test_csv_row_with_more_values_than_columns(project):
    msg = _refused(project, "commas.csv", "prompt_en,response_en\n\"Hi, you\",Hello\nWhat is 1,5?,1.5\n")
    assert "commas.csv, line 3: 3 values for 2 columns; put a field holding a comma in double quotes" in msg


def test_a_field_that_is_not_text(project):
    assert "line 1: field 'prompt_en' is a number, not text" in _refused(project, "n.jsonl", '{"prompt_en": 7, "response_en": "x"}\n')


# ---- over-long fields and pairs ----

def test_a_10_mb_field_is_refused_at_load_with_its_line(project):
    rows = arithmetic_rows(3)
    rows[1]["prompt_en"] = "x" * 10_000_000
    msg = _refused(project, "huge.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert "huge.jsonl, line 2: field 'prompt_en' has 10,000,000 characters, over the limit of 100,000" in msg


def test_the_field_limit_is_inclusive_and_covers_translations(project):
    rows = arithmetic_rows(3)
    rows[0]["prompt_en"] = "y" * MAX_FIELD_CHARS
    write_jsonl(project / "edge.jsonl", rows)
    assert len(load_english(DataConfig(source=str(project / "edge.jsonl")))[0]) == 3
    rows[2]["response_ko"] = "z" * (MAX_FIELD_CHARS + 1)
    assert "line 3: field 'response_ko' has 100,001 characters" in _refused(project, "edge2.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def test_a_csv_field_past_the_csv_module_limit(project):
    msg = _refused(project, "huge.csv", "prompt_en,response_en\na,b\n" + "x" * 200_000 + ",b\n")
    assert "huge.csv, line 3: a field is longer than" in msg and "100,000" in msg


def _tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def _long_rows(n_long: int, n: int = 6) -> list[dict]:
    """n pairs, the first n_long with prompts far past 64 tokens; prompt_tgt / response_tgt as tokenize_rows reads them."""
    rows = arithmetic_rows(n)
    for i, row in enumerate(rows):
        if i < n_long:
            row["prompt_en"] = row["prompt_ko"] = f"question {i} " + "word " * 400
        row["prompt_tgt"], row["response_tgt"] = row["prompt_ko"], row["response_ko"]
    return rows


def test_tokenize_rows_marks_cuts_and_drops(tiny_model):
    from clo.train.objective import KEYS
    from clo.train.batches import tokenize_rows

    tok = _tokenizer(tiny_model)
    rows = _long_rows(2)
    cut = tokenize_rows(rows, tok, KEYS, 128, 64, "cut")
    assert [f["cut"] for f in cut] == [True, True, False, False, False, False]
    assert all(len(f[f"{k}_input_ids"]) <= 128 for f in cut for k in KEYS)
    dropped = tokenize_rows(rows, tok, KEYS, 128, 64, "drop")
    assert [f["id"] for f in dropped] == [r["id"] for r in rows[2:]]
    assert dropped == cut[2:]  # the kept pairs are tokenised the same way


def _recipe(tiny_model, source, **overrides) -> Recipe:
    base = {"model.name_or_path": str(tiny_model), "data.source": str(source), "data.pairs": 6,
            "training.max_length": 128, "training.max_prompt_length": 64, "training.max_steps": 1}
    return Recipe.load(overrides=base | overrides)


@pytest.mark.parametrize("overlong, said, kept", [("cut", "were cut to fit", 6), ("drop", "were left out", 4)])
def test_setup_says_once_how_many_pairs_were_too_long(project, tiny_model, capsys, overlong, said, kept):
    from clo.train.run import setup

    rows = [{k: v for k, v in r.items() if not k.endswith("_tgt")} for r in _long_rows(2)]
    write_jsonl(project / "long.jsonl", rows)
    s = setup(_recipe(tiny_model, project / "long.jsonl", **{"training.overlong": overlong}))
    out = capsys.readouterr().out
    assert out.count("pairs are longer than") == 1
    assert f"2 of 6 pairs are longer than 128 tokens (prompts 64) and {said}" in out
    assert len(s.features) == kept
    assert s.data.manifest["overlong"] == {"pairs": 2, "action": overlong, "max_length": 128, "max_prompt_length": 64}


def test_setup_refuses_when_drop_leaves_nothing(project, tiny_model):
    from clo.train.run import setup

    write_jsonl(project / "long.jsonl", [{k: v for k, v in r.items() if not k.endswith("_tgt")} for r in _long_rows(6)])
    with pytest.raises(CLOError, match="all 6 pairs are longer than 128 tokens .* leaves none to train on"):
        setup(_recipe(tiny_model, project / "long.jsonl", **{"training.overlong": "drop"}))
    assert not (project / "adapters").exists()


def test_overlong_is_a_choice():
    with pytest.raises(CLOError, match="training.overlong: 'trim' is not one of cut, drop"):
        Recipe.load(overrides={"training.overlong": "trim"})


# ---- recipe files ----

@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"\x00\x01\x02binary\xff", "is not text (it has NUL bytes)"),
        (b"data:\n  source: caf\xe9\n", "line 2: not UTF-8 text (byte 0xe9)"),
        (b"- a\n- b\n", "expected a mapping of sections (model, lora, data, method, training), got a list"),
        (b"hello\n", "got a string ('hello')"),
        (b"42\n", "got a number (42)"),
        (b"data: [\n", "not valid YAML"),
        (b"data: 3\n", "section 'data' must be a mapping of keys to values, got a number (3)"),
        (b"data:\n  source: [a, b]\n", "data.source: ['a', 'b'] is not a valid str"),
    ],
)
def test_a_recipe_that_is_not_a_recipe(tmp_path, content, fragment):
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    with pytest.raises(CLOError) as e:
        Recipe.load(path)
    assert str(path) in str(e.value) and fragment in str(e.value) and "\n" not in str(e.value)


def test_a_recipe_with_bom_and_an_empty_recipe_load(tmp_path):
    (tmp_path / "bom.yaml").write_bytes(codecs.BOM_UTF8 + b"data:\n  pairs: 7\n")
    (tmp_path / "empty.yaml").write_bytes(b"")
    assert Recipe.load(tmp_path / "bom.yaml").data.pairs == 7
    assert Recipe.load(tmp_path / "empty.yaml") == Recipe.load()


def test_recipe_save_is_atomic(tmp_path):
    recipe = Recipe.load(overrides={"data.pairs": 9})
    recipe.save(tmp_path / "r.yaml")
    assert [p.name for p in tmp_path.iterdir()] == ["r.yaml"]
    assert Recipe.load(tmp_path / "r.yaml").data.pairs == 9


# ---- language codes ----

@pytest.mark.parametrize(
    "given, code",
    [("KO", "ko"), (" ko ", "ko"), ("kor", "ko"), ("ko-KR", "ko"), ("ko_kr", "ko"), ("kor_Hang", "ko"), ("Korean", "ko"),
     ("zh-Hans", "zh"), ("zh-CN", "zh"), ("chi", "zh"), ("zho", "zh"), ("sw-KE", "sw"), ("swa", "sw"), ("swh", "sw"),
     ("deu", "de"), ("ger", "de"), ("DE-de", "de"), ("ind", "id"), ("yor", "yo"), ("eng", "en"), ("es-419", "es"),
     ("MINI", "mini")],
)
def test_common_forms_map_to_the_tables_code(given, code):
    assert language(given).code == code


@pytest.mark.parametrize("given", ["xx", "", "ko-", "korr", "x-ko", "en-GB-oxendict-x"])
def test_unknown_codes_list_the_known_ones(given):
    with pytest.raises(CLOError, match=r"unknown language code .*: use an ISO 639-1 code, one of am, ar, .*, zh$"):
        language(given)


@pytest.mark.parametrize("given", ["zh-TW", "zh-Hant", "zh_HK", "zho-Hant-TW"])
def test_traditional_chinese_is_refused_not_simplified(given):
    with pytest.raises(CLOError, match="is Traditional Chinese, which the table lacks"):
        language(given)


@pytest.mark.parametrize("given", ["KO", "kor", "ko-KR"])
def test_recipe_normalises_the_language_for_names_and_fields(project, given):
    recipe = Recipe.load(overrides={"data.target_lang": given, "data.source": str(write_jsonl(project / "d.jsonl", arithmetic_rows(3))),
                                    "data.pairs": 3})
    assert recipe.data.target_lang == "ko" and recipe.adapter_name("clo") == "clo-ko"
    data = build_pairs(recipe.data)  # reads prompt_ko / response_ko, not prompt_KO
    assert data.manifest["target_lang"] == "ko" and data.manifest["translator"] == "file"


def test_python_api_normalises_too(project):
    write_jsonl(project / "d.jsonl", arithmetic_rows(3))
    rows, _ = load_english(DataConfig(target_lang="KOR", source=str(project / "d.jsonl")))
    assert rows[0]["prompt_tgt"] == arithmetic_rows(1)[0]["prompt_ko"]
    recipe = Recipe()
    recipe.data.target_lang = "ko-KR"
    recipe.validate()
    assert recipe.adapter_name("sft") == "sft-ko"


def test_bad_language_in_a_recipe_names_the_field(tmp_path):
    (tmp_path / "r.yaml").write_text("data:\n  target_lang: klingon\n")
    with pytest.raises(CLOError, match=r"r.yaml: data.target_lang: unknown language code 'klingon'"):
        Recipe.load(tmp_path / "r.yaml")


def test_english_in_any_form_is_not_a_target():
    with pytest.raises(CLOError, match="must not be English"):
        Recipe.load(overrides={"data.target_lang": "eng"})


@pytest.mark.parametrize("argv", [["generate", "hi", "--lang", "{}"], ["votes", "export", "--lang", "{}"], ["leaderboard", "--lang", "{}"]])
def test_cli_lang_options_normalise(argv, capsys):
    parser = build_parser()
    assert parser.parse_args([a.format("ko-KR") for a in argv]).lang == "ko"
    with pytest.raises(SystemExit) as e:
        parser.parse_args([a.format("xx") for a in argv])
    assert e.value.code == 2 and "argument --lang: unknown language code 'xx'" in capsys.readouterr().err


def test_every_language_has_a_unique_code():
    assert all(code == lang.code == code.lower() for code, lang in LANGUAGES.items())


# ---- NaN and infinities ----

FLOAT_FIELDS = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls) if base_type(f)[0] is float]


def test_there_are_float_fields():
    assert {"method.lam", "method.beta", "training.learning_rate", "training.epochs", "lora.dropout"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("dotted", FLOAT_FIELDS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_every_float_option_refuses_nan_and_inf(dotted, value):
    with pytest.raises(CLOError) as e:
        Recipe.load(overrides={dotted: value})
    assert str(e.value) == f"command line: {dotted}: {value!r} is not a finite number; give a plain number such as 0.1"


@pytest.mark.parametrize("dotted", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_every_float_in_a_recipe_file_refuses_nan_and_inf(tmp_path, dotted, value):
    section, key = dotted.split(".")
    (tmp_path / "r.yaml").write_text(f"{section}:\n  {key}: {value}\n")
    with pytest.raises(CLOError, match=rf"r.yaml: {dotted}: -?(nan|inf) is not a finite number"):
        Recipe.load(tmp_path / "r.yaml")


@pytest.mark.parametrize("dotted", FLOAT_FIELDS)
def test_validate_refuses_nan_set_from_python(dotted):
    recipe = Recipe()
    section, key = dotted.split(".")
    setattr(getattr(recipe, section), key, math.nan)
    with pytest.raises(CLOError, match=rf"^{dotted} must be a finite number, got nan$"):
        recipe.validate()


@pytest.mark.parametrize(
    "dotted, value, fragment",
    [("training.learning_rate", -1e-4, "training.learning_rate must be ≥ 0"), ("lora.dropout", 1.0, "lora.dropout must be in [0, 1)"),
     ("training.warmup", -1, "training.warmup must be ≥ 0"), ("method.orpo_lambda", -0.1, "method.orpo_lambda must be ≥ 0")],
)
def test_float_ranges(dotted, value, fragment):
    with pytest.raises(CLOError) as e:
        Recipe.load(overrides={dotted: value})
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "argv",
    [["generate", "hi", "--temperature", "nan"], ["generate", "hi", "--temperature", "inf"], ["miniature", "--lam", "nan"],
     ["miniature", "--beta", "inf"], ["miniature", "--learning-rate=-inf"], ["miniature", "--epochs", "nan"]],
)
def test_cli_floats_outside_the_recipe_refuse_nan_and_inf(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    option, value = argv[-1].split("=") if "=" in argv[-1] else argv[-2:]  # "-inf" alone would read as an option
    assert f"argument {option}: expected a finite number, got {value!r}" in capsys.readouterr().err


JUDGE = ["judge", "--adapters", "clo-ko,sft-ko", "--lang", "ko"]


@pytest.mark.parametrize(
    "argv",
    [["generate", "hi", "--max-tokens", "0"], ["generate", "--prompts", "sample", "--limit", "-3"],
     [*JUDGE, "--max-tokens", "0"], [*JUDGE, "--concurrency", "0"], [*JUDGE, "--judge-timeout", "nan"],
     [*JUDGE, "--limit", "0"]],
)
def test_cli_counts_and_timeouts_must_be_above_zero(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    option, value = argv[-2:]
    assert f"argument {option}: expected a number above 0, got {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--method.lam", "--method.beta", "--lr", "--epochs", "--training.warmup"])
def test_cli_train_refuses_nan_before_anything_is_written(project, capsys, option):
    assert main(["train", option, "nan"]) == 2
    assert "is not a finite number" in capsys.readouterr().err
    assert not any(project.iterdir())

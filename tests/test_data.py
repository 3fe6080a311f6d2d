"""English sources, translation with a cache, and the cross-lingual rows — on shipped and hand-made data."""

import json
import os

import pytest
from conftest import arithmetic_rows, write_jsonl

from clo import CLOError
from clo.config import DataConfig
from clo.train.data import SAMPLE, HFTranslator, build_pairs, load_english, read_records, select_oasst_pairs
from clo.languages import LANGUAGES, language


def test_sample_ships_three_tiers():
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 120
    assert len({r["id"] for r in rows}) == len(rows)
    for lang in ("ko", "zh", "sw"):
        assert all(r[f"prompt_{lang}"].strip() and r[f"response_{lang}"].strip() for r in rows)
    assert {language(code).tier for code in ("zh", "ko", "sw")} == {"high", "mid", "low"}


@pytest.mark.parametrize("lang", ["ko", "zh", "sw"])
def test_sample_builds_pairs_without_a_translator(project, lang):
    data = build_pairs(DataConfig(target_lang=lang, pairs=40))
    assert len(data) == 40
    assert data.manifest["translator"] == "file"
    row = data.rows[0]
    assert set(row) == {"id", "prompt_en", "response_en", "prompt_tgt", "response_tgt"}
    assert row["prompt_tgt"] != row["prompt_en"]
    preview = data.preview(2)
    assert f"✓ y_{lang}" in preview and "✗ y_en" in preview


def test_selection_is_seeded_and_cached(project):
    a = build_pairs(DataConfig(target_lang="ko", pairs=30, seed=1))
    b = build_pairs(DataConfig(target_lang="ko", pairs=30, seed=1))
    c = build_pairs(DataConfig(target_lang="ko", pairs=30, seed=2))
    assert [r["id"] for r in a.rows] == [r["id"] for r in b.rows]
    assert [r["id"] for r in a.rows] != [r["id"] for r in c.rows]
    assert a.manifest["rows_sha256"] == b.manifest["rows_sha256"]
    assert len(list((project / "cache" / "datasets").glob("*.jsonl"))) == 2


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_local_files_with_custom_fields(project, fmt):
    rows = [{"instruction": f"Say {i}", "output": f"{i}", "q_ko": f"{i}라고 말해", "a_ko": f"{i}"} for i in range(5)]
    path = project / f"d.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    else:
        import pandas as pd

        pd.DataFrame(rows).to_csv(path, index=False)
    cfg = DataConfig(source=str(path), prompt_field="instruction", response_field="output",
                     target_prompt_field="q_{lang}", target_response_field="a_{lang}", pairs=5)
    data = build_pairs(cfg)
    assert sorted(r["prompt_en"] for r in data.rows) == sorted(r["instruction"] for r in rows)
    assert all(r["prompt_tgt"].endswith("라고 말해") for r in data.rows)


def test_oasst_selection_top_ranked_english_first_turns():
    msgs = [
        {"message_id": "p1", "parent_id": None, "role": "prompter", "lang": "en", "text": "Q1", "rank": None},
        {"message_id": "a1", "parent_id": "p1", "role": "assistant", "lang": "en", "text": "best", "rank": 0},
        {"message_id": "a2", "parent_id": "p1", "role": "assistant", "lang": "en", "text": "worse", "rank": 1},
        {"message_id": "p1b", "parent_id": "a1", "role": "prompter", "lang": "en", "text": "follow-up", "rank": 0},
        {"message_id": "a3", "parent_id": "p1b", "role": "assistant", "lang": "en", "text": "second turn", "rank": 0},
        {"message_id": "p2", "parent_id": None, "role": "prompter", "lang": "de", "text": "Frage", "rank": None},
        {"message_id": "a4", "parent_id": "p2", "role": "assistant", "lang": "de", "text": "Antwort", "rank": 0},
        {"message_id": "p3", "parent_id": None, "role": "prompter", "lang": "en", "text": "Q3", "rank": None},
        {"message_id": "a5", "parent_id": "p3", "role": "assistant", "lang": "en", "text": "deleted", "rank": 0, "deleted": True},
    ]
    assert select_oasst_pairs(msgs) == [{"id": "p1", "prompt_en": "Q1", "response_en": "best"}]


def test_local_dataset_folder_in_oasst_layout(project):
    """A dataset folder (as saved from the hub) goes through `datasets.load_dataset` and the oasst selection."""
    folder = project / "oasst_local"
    folder.mkdir()
    msgs = []
    for i in range(6):
        msgs.append({"message_id": f"p{i}", "parent_id": None, "role": "prompter", "lang": "en", "text": f"Question {i}?", "rank": None})
        msgs.append({"message_id": f"a{i}", "parent_id": f"p{i}", "role": "assistant", "lang": "en", "text": f"Answer {i}.", "rank": 0})
    write_jsonl(folder / "train.jsonl", msgs)
    rows, source = load_english(DataConfig(source=str(folder)))
    assert [r["prompt_en"] for r in rows] == [f"Question {i}?" for i in range(6)]
    assert source["source"] == str(folder)


class CountingTranslator:
    model_id = "counting"

    def __init__(self):
        self.calls = []

    def translate(self, texts, src, tgt):
        self.calls.append(list(texts))
        return [f"<{tgt}>{t}" for t in texts]


def test_translations_are_cached_by_content(project):
    rows = [{"prompt_en": f"Line one {i}\nLine two", "response_en": f"Answer {i}"} for i in range(6)]
    path = write_jsonl(project / "en.jsonl", rows)
    tr = CountingTranslator()
    cfg = DataConfig(source=str(path), pairs=4, translator="m2m100")
    data = build_pairs(cfg, translator_factory=lambda c: tr)
    assert all(r["prompt_tgt"].startswith("<ko>Line one") and "\n<ko>Line two" in r["prompt_tgt"] for r in data.rows)
    sent = [t for call in tr.calls for t in call]
    assert sent.count("Line two") == 1  # a repeated line is translated once
    # more pairs: only the new texts go to the translator
    tr.calls.clear()
    build_pairs(DataConfig(source=str(path), pairs=6, translator="m2m100"), translator_factory=lambda c: tr)
    sent_again = [t for call in tr.calls for t in call]
    assert sent_again and "Line two" not in sent_again and len(sent_again) == 4  # 2 new prompts + 2 new answers


def test_real_m2m100_code_path(project, tiny_m2m100):
    """The HF translator with a real M2M100 tokenizer: language tokens, batching, generation."""
    translator = HFTranslator("m2m100", str(tiny_m2m100), batch_size=2)
    out = translator.translate(["Hello world.", "How are you?", "Hi"], "en", "ko")
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert translator._target_token_id("sw") != translator.tokenizer.unk_token_id
    rows = [{"prompt_en": f"Hello {i}", "response_en": "world"} for i in range(3)]
    path = write_jsonl(project / "en.jsonl", rows)
    data = build_pairs(DataConfig(source=str(path), pairs=3, translator="m2m100", translator_model=str(tiny_m2m100)))
    assert data.manifest["translator_model"] == str(tiny_m2m100)
    assert len(data) == 3


def test_every_language_has_translator_codes():
    for lang in LANGUAGES.values():  # the table holds real languages only; a model's invented one is registered
        assert lang.m2m100 and "_" in lang.nllb and lang.tier in ("high", "mid", "low")
    from clo.languages import registered

    for lang in registered().values():  # brought by an offline model (clo.models.table): no translator knows it
        assert lang.code not in LANGUAGES and lang.m2m100 is None and lang.nllb is None and language(lang.code) == lang


# ---- bad input: a clear error naming the place, and nothing written ----

def _bad(project, rows_or_text, **cfg):
    path = project / "bad.jsonl"
    if isinstance(rows_or_text, str):
        path.write_text(rows_or_text, encoding="utf-8")
    else:
        write_jsonl(path, rows_or_text)
    with pytest.raises(CLOError) as e:
        build_pairs(DataConfig(source=str(path), **cfg))
    assert not (project / "cache" / "datasets").exists()
    return str(e.value)


def test_missing_field_names_file_line_and_field(project):
    rows = arithmetic_rows(3)
    del rows[1]["response_en"]
    msg = _bad(project, rows, pairs=2)
    assert "bad.jsonl, line 2" in msg and "'response_en'" in msg


def test_empty_field(project):
    rows = arithmetic_rows(3)
    rows[2]["prompt_en"] = "   "
    assert "line 3" in _bad(project, rows, pairs=2)


def test_invalid_json_line(project):
    text = json.dumps(arithmetic_rows(1)[0]) + "\n{not json\n"
    assert "line 2: not valid JSON" in _bad(project, text, pairs=1)


def test_no_usable_rows(project):
    assert "no usable rows" in _bad(project, "\n\n", pairs=1)


def test_translation_that_does_not_line_up(project):
    rows = arithmetic_rows(4)
    del rows[2]["response_ko"]
    msg = _bad(project, rows, pairs=2)
    assert "line 3" in msg and "prompt_ko" in msg and "response_ko" in msg


def test_some_rows_translated_others_not(project):
    rows = arithmetic_rows(4)
    del rows[3]["prompt_ko"], rows[3]["response_ko"]
    msg = _bad(project, rows, pairs=2)
    assert "line 4" in msg and "no translation" in msg


def test_file_translator_without_translations(project):
    rows = [{"prompt_en": "a", "response_en": "b"}]
    assert "no translations into 'ko'" in _bad(project, rows, pairs=1, translator="file")


def test_more_pairs_than_rows(project):
    assert "only 3 usable rows" in _bad(project, arithmetic_rows(3), pairs=10)


def test_unknown_language_code():
    with pytest.raises(CLOError, match="unknown language code 'xx'"):
        language("xx")


def test_unsupported_file_type(project):
    (project / "d.txt").write_text("hi")
    with pytest.raises(CLOError, match="unsupported file type"):
        list(read_records(project / "d.txt"))


def test_hub_dataset_offline_is_one_sentence(project, offline):
    with pytest.raises(CLOError) as e:
        load_english(DataConfig(source="OpenAssistant/oasst1"))
    msg = str(e.value)
    assert "OpenAssistant/oasst1" in msg and "unreachable" in msg and "--data" in msg and "\n" not in msg


def test_hub_translator_offline_is_one_sentence(offline):
    with pytest.raises(CLOError, match="facebook/m2m100_418M.*--data.translator_model"):
        HFTranslator("m2m100")


def test_eight_processes_building_one_cache_entry_leave_one_complete_file(project):
    """Page loads build the pairs cache: concurrent writers of one entry each write a file of their own and rename
    it into place, so one complete entry remains and no temporary file is left behind."""
    import subprocess
    import sys

    from conftest import ROOT

    from clo.train.data import _hash

    script = ("from clo.config import DataConfig; from clo.train.data import build_pairs; "
              "print(build_pairs(DataConfig(target_lang='ko', pairs=20)).manifest['rows_sha256'])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
    files = sorted(p.name for p in (project / "cache" / "datasets").iterdir())
    assert len(files) == 2 and files[0].endswith(".jsonl") and files[1].endswith(".manifest.json"), files
    folder = project / "cache" / "datasets"
    rows = [json.loads(line) for line in (folder / files[0]).read_text(encoding="utf-8").splitlines()]
    manifest = json.loads((folder / files[1]).read_text(encoding="utf-8"))
    assert len(rows) == 20 and manifest["rows_sha256"] == _hash(rows) == results[0][0].strip()

"""Language of an answer and language fidelity, offline."""

import json

import pytest

from clo.data import SAMPLE
from clo.langid import UNKNOWN, detect, fidelity

ROWS = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()[:20]]


@pytest.mark.parametrize("lang", ["en", "ko", "zh", "sw"])
def test_sample_answers_are_detected(lang):
    hits = sum(detect(r[f"response_{lang}"]).code == lang for r in ROWS)
    assert hits >= 19, f"{hits}/20 {lang} answers detected as {lang}"


@pytest.mark.parametrize("text, code", [
    ("Guten Morgen! Wie geht es dir heute? Ich hoffe, du hast gut geschlafen.", "de"),
    ("Ẹ kú àárọ̀. Ṣé dáadáa ni ẹ jí? Mo fẹ́ràn oúnjẹ yìí gan-an.", "yo"),
])
def test_other_paper_languages(text, code):
    assert detect(text).code == code


@pytest.mark.parametrize("text", ["", "OK", "42", "`x = 1`", "🙂🙂", "Hi!"])
def test_too_short_is_unknown_not_guessed(text):
    assert detect(text) .code == UNKNOWN


def test_code_spans_do_not_decide_the_language():
    text = "이 함수는 `def add(a, b): return a + b` 처럼 두 수를 더합니다. 간단하죠."
    assert detect(text).code == "ko"


def test_fidelity_counts_only_judged_answers():
    pairs = [("ko", ROWS[0]["response_ko"]), ("ko", ROWS[1]["response_en"]), ("ko", "네"), ("ko", ROWS[2]["response_ko"])]
    f = fidelity(pairs)
    assert f == {"fidelity": pytest.approx(2 / 3), "judged": 3, "unknown": 1, "total": 4}

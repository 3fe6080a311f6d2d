"""Language of an answer and language fidelity, offline."""

import json

import pytest

from clo.train.data import SAMPLE
from clo.evaluate.langid import UNKNOWN, Detection, detect, fidelity

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


@pytest.mark.parametrize("text", ["", "OK", "42", "`x = 1`", "🙂🙂", "Hi!", "Red.", "the cat ."])
def test_too_short_is_unknown_not_guessed(text):
    """"Red." and "the cat ." are words of the miniature's vocabulary: no model's own detector decides them here."""
    assert detect(text) == Detection(UNKNOWN, 0.0)


def test_a_judge_is_asked_first_and_none_leaves_the_text_to_lingua():
    """A served model's own detector (clo.models.table) decides what it knows; None from it means lingua decides."""
    asked = []

    def judge(text):
        asked.append(text)
        return Detection("xx", 1.0) if text.startswith("zorp") else None

    assert detect("zorp blat", judge) == Detection("xx", 1.0)
    assert detect("Red.", judge).code == UNKNOWN and detect(ROWS[0]["response_ko"], judge).code == "ko"
    assert asked[0] == "zorp blat" and len(asked) == 3
    assert detect("zorp `blat`", judge).code == "xx" and asked[-1] == "zorp  "  # code spans are dropped first
    pairs = [("xx", "zorp"), ("xx", ROWS[0]["response_en"]), ("xx", "Hi!")]
    assert fidelity(pairs, judge) == {"fidelity": 0.5, "judged": 2, "unknown": 1, "total": 3}
    assert fidelity(pairs)["judged"] == 1  # without it, lingua judges only the English answer


def test_code_spans_do_not_decide_the_language():
    text = "이 함수는 `def add(a, b): return a + b` 처럼 두 수를 더합니다. 간단하죠."
    assert detect(text).code == "ko"


def test_fidelity_counts_only_judged_answers():
    pairs = [("ko", ROWS[0]["response_ko"]), ("ko", ROWS[1]["response_en"]), ("ko", "네"), ("ko", ROWS[2]["response_ko"])]
    f = fidelity(pairs)
    assert f == {"fidelity": pytest.approx(2 / 3), "judged": 3, "unknown": 1, "total": 4}

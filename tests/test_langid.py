"""Language of an answer and language fidelity, offline."""

import json
from pathlib import Path

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
    assert fidelity(pairs, judge) == {"fidelity": 0.5, "judged": 2, "unknown": 1, "echo": 0, "loop": 0, "total": 3}
    assert fidelity(pairs)["judged"] == 1  # without it, lingua judges only the English answer


def test_code_spans_do_not_decide_the_language():
    text = "이 함수는 `def add(a, b): return a + b` 처럼 두 수를 더합니다. 간단하죠."
    assert detect(text).code == "ko"


def test_fidelity_counts_only_judged_answers():
    pairs = [("ko", ROWS[0]["response_ko"]), ("ko", ROWS[1]["response_en"]), ("ko", "네"), ("ko", ROWS[2]["response_ko"])]
    f = fidelity(pairs)
    assert f == {"fidelity": pytest.approx(2 / 3), "judged": 3, "unknown": 1, "echo": 0, "loop": 0, "total": 4}


# ---- answers judged among the languages in play (the app, generate, replicate, `python -m clo langid`) ----

LABELLED = [json.loads(line) for line in (Path(__file__).parent / "data" / "langid_answers.jsonl").read_text(
    encoding="utf-8").splitlines() if line.strip()]


def test_the_labelled_set_is_what_it_says():
    """tests/data/langid_answers.jsonl: at least 300 short answers, every shipped language, English answers to
    other-language prompts (the error fidelity must catch), answers that are no language."""
    from collections import Counter

    langs = Counter(r["lang"] for r in LABELLED)
    assert len(LABELLED) >= 300 and len({r["text"] for r in LABELLED}) == len(LABELLED)
    assert all(langs[code] >= 40 for code in ("en", "ko", "zh", "sw")) and langs[UNKNOWN] >= 20
    assert sum(r["lang"] == "en" and r["prompt_lang"] != "en" for r in LABELLED) >= 40
    assert {"sentence", "fragment", "number", "names", "mixed"} <= {r["kind"] for r in LABELLED}


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (Path(__file__).parent / "data" / name).read_text(encoding="utf-8").splitlines()
            if line.strip()]


def test_answers_written_after_the_tuning_are_judged_as_well():
    """tests/data/langid_heldout.jsonl, written after the detector was tuned and never used to tune it (measured
    there: 189 of 200 right, every English, Swahili, Korean and Yoruba answer among them): no English answer is
    called the prompt's language, and each language the demo serves is mostly right."""
    rows = _rows("langid_heldout.jsonl")
    assert len(rows) >= 200 and sum(r["lang"] == "en" and r["prompt_lang"] != "en" for r in rows) >= 20
    codes = [detect(r["text"], lang=r["prompt_lang"]).code for r in rows]
    assert not [r["text"] for r, c in zip(rows, codes) if r["lang"] == "en" and c == r["prompt_lang"] != "en"]
    for lang in ("en", "ko", "zh", "sw", "yo"):
        mine = [c == r["lang"] for r, c in zip(rows, codes) if r["lang"] == lang]
        assert sum(mine) / len(mine) >= 0.9, (lang, sum(mine), len(mine))
    assert sum(c == r["lang"] for r, c in zip(rows, codes)) / len(rows) >= 0.9


def test_echoes_are_told_from_answers_that_restate_the_question():
    """tests/data/langid_echoes.jsonl (held out too): an answer that only repeats its prompt is an echo; one that
    repeats it and goes on is judged by what follows (an English continuation is English, whatever the prompt's
    language); a real answer that reuses the question's words is its language. Measured: 39 of 40 (a short
    restatement, "Pweza ana mikono minane." to "Pweza ana mikono mingapi?", is called an echo)."""
    rows = _rows("langid_echoes.jsonl")
    codes = [detect(r["text"], lang=r["prompt_lang"], prompt=r["prompt"]).code for r in rows]
    by_kind = {k: [c == r["label"] for r, c in zip(rows, codes) if r["kind"] == k] for k in {r["kind"] for r in rows}}
    assert all(by_kind["echo"]) and all(by_kind["echo+answer"]), by_kind
    assert sum(by_kind["restates"]) >= len(by_kind["restates"]) - 1, by_kind


def test_short_answers_are_judged_right_among_the_languages_in_play():
    """Measured against the labelled set (bench/langid.py prints the table): an English answer is never called the
    prompt's language, each shipped language is mostly right, and the old judging among all of lingua's languages
    is measurably worse on the same rows (so the set can tell the two apart)."""
    after = [detect(r["text"], lang=r["prompt_lang"]).code for r in LABELLED]
    before = [detect(r["text"]).code for r in LABELLED]
    english_as_target = [r["text"] for r, code in zip(LABELLED, after)
                         if r["lang"] == "en" and r["prompt_lang"] != "en" and code == r["prompt_lang"]]
    assert english_as_target == []
    for lang in ("en", "ko", "zh", "sw"):
        mine = [code == r["lang"] for r, code in zip(LABELLED, after) if r["lang"] == lang]
        assert sum(mine) / len(mine) >= 0.9, (lang, sum(mine), len(mine))
    right = lambda codes: sum(code == r["lang"] for r, code in zip(LABELLED, codes)) / len(LABELLED)  # noqa: E731
    assert right(after) >= 0.9 and right(after) - right(before) >= 0.15, (right(after), right(before))


@pytest.mark.parametrize("text, lang, code", [
    ("The capital of Japan is Tokyo.", "ko", "en"),  # all languages, low accuracy: st
    ("Paris is in France.", "ko", "en"),  # fr
    ("The sun rises in the east.", "sw", "en"),  # fi
    ("Water boils at 100 degrees Celsius.", "zh", "en"),  # unknown
    ("Mji mkuu wa Kenya ni Nairobi.", "sw", "sw"),  # so
    ("Jakarta is the capital of Indonesia.", "id", UNKNOWN),  # names alone would say id: unsure, not a guess
    ("네, 맞아요.", "ko", "ko"),
    ("L'Étoile, la Marseillaise, la femme, la femme", "en", "fr"),  # a drift language still shows when it is one
])
def test_the_examples_that_broke_the_old_judging(text, lang, code):
    assert detect(text, lang=lang).code == code


def test_an_english_answer_that_drifts_into_the_target_language_is_caught():
    """Compare judges an answer to the English prompt among English and the demo's target language too."""
    assert detect("서울은 한국의 수도입니다.", lang="en", also=("ko",)).code == "ko"
    assert detect("Mji mkuu wa Tanzania ni Dodoma.", lang="en", also=("sw",)).code == "sw"


def test_cli_langid_judges_one_line_at_a_time_as_the_app(monkeypatch, capsys):
    import io

    from clo.__main__ import main

    lines = ["The capital of Japan is Tokyo.", "", "서울은 한국의 수도입니다.", "42", "Mji mkuu wa Kenya ni Nairobi."]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["langid", "--lang", "KO"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{detect(t, lang='ko').code}\t{t}" for t in lines if t]
    assert [line.split("\t")[0] for line in out] == ["en", "ko", UNKNOWN, "en"]  # sw is not in play for a ko prompt
    monkeypatch.setattr("sys.stdin", io.StringIO("Red.\n"))
    assert main(["langid", "--lang", "mini", "--model", "miniature"]) == 0  # the model's own detector first
    assert capsys.readouterr().out == "en\tRed.\n"


def test_replicate_judges_each_answer_for_the_language_it_was_asked_in():
    """The replication's scores (English fidelity, target fidelity) read each answer's language as judged for the
    prompt it answers: a short English answer to a Swahili prompt counts against target fidelity."""
    from clo.engines.base import Answer
    from clo.experiments.replicate import answer_all, score

    replies = {"How do I boil an egg?": "Boil it for eight minutes.", "Ninachemshaje yai?": "Boil it for eight minutes.",
               "What is the capital of Kenya?": "The capital of Kenya is Nairobi.",
               "Nitapikaje wali?": "Nitapikaje wali? Nitapikaje wali?"}

    class Replies:  # an engine that answers from the table above, for the scoring only
        def generate(self, requests):
            return [Answer(r.variant, replies[r.messages[0]["content"]], finish_reason="stop") for r in requests]

    asked = [{"kind": "held-out", "id": "a", "query_lang": "en", "prompt": "How do I boil an egg?", "answers": None},
             {"kind": "held-out", "id": "a", "query_lang": "sw", "prompt": "Ninachemshaje yai?", "answers": None},
             {"kind": "facts", "id": "f", "query_lang": "en", "prompt": "What is the capital of Kenya?", "answers": ["Nairobi"]},
             {"kind": "held-out", "id": "b", "query_lang": "sw", "prompt": "Nitapikaje wali?", "answers": None}]
    seen = []
    answers = answer_all(Replies(), ["base"], asked, 16,
                         lambda text, lang, prompt: seen.append(lang) or detect(text, lang=lang, prompt=prompt))
    assert seen == ["en", "sw", "en", "sw"] and list(answers.answer_lang) == ["en", "en", "en", "echo"]
    [row] = score(answers, "sw").to_dict("records")
    assert (row["english_fidelity"], row["target_fidelity"], row["facts_accuracy"]) == (1.0, 0.0, 1.0)
    assert (row["target_judged"], row["target_asked"], row["echoes_or_loops"]) == (1, 2, 1)  # the echo is not judged


ECHOED = "서울에서 가 볼 만한 곳은 어디인가요?"


@pytest.mark.parametrize("answer, prompt, code", [
    ("서울에서 가 볼 만한 곳은 어디인가요? 어디인가요?", ECHOED, "echo"),  # SmolLM2's SFT and CLO answers, seen in Compare
    ("서울에서 가 볼 만한 곳은 경복궁, 북촌 한옥마을, 남산타워입니다.", ECHOED, "ko"),  # restates, then answers
    ("How do I boil an egg? How do I boil an egg?", "How do I boil an egg?", "echo"),
    ("Gyeongbokgung Palace and Bukchon Hanok Village.", ECHOED, "en"),
    ("L'Étoile, la Marseillaise, la femme, la femme, la femme, la femme, la femme, la femme, la femme, la femme, "
     "la femme, la femme", "What is the capital of France?", "loop"),  # the Korean adapters' English, seen in the app
    ("어디인가요? " * 20, "What is the capital of France?", "loop"),
    ("Je, umai, umai, umai, umai, umai, umai, umai, umai, umai, umai, umai, umai, umai, umai", "Habari?", "loop"),
    # SmolLM2's base on Swahili prompts: the prompt again, then English about it (in quotes, the prompt once more)
    ("Kwa nini anga ni la buluu.\n\nThe answer is: \"Kwa nini anga ni la buluu.\" It is a question about colour.",
     "Kwa nini anga ni la buluu?", "en"),
    ("Ninawezaje kupiga picha ya skrini kwenye Windows. Bonyeza kitufe cha PrtScn, kisha ubandike picha.",
     "Ninawezaje kupiga picha ya skrini kwenye Windows?", "sw"),
])
def test_echoes_and_loops_are_not_answers_in_a_language(answer, prompt, code):
    lang = "en" if prompt.startswith(("What", "How")) else "sw" if prompt.isascii() else "ko"
    assert detect(answer, lang=lang, prompt=prompt).code == code


@pytest.mark.parametrize("lang", ["en", "ko", "zh", "sw"])
def test_no_sample_answer_is_an_echo_or_a_loop(lang):
    """Every answer of the shipped sample (200 per language, written as good answers) is judged a language."""
    from clo.evaluate.langid import is_echo, is_loop

    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert not [r["id"] for r in rows if is_loop(r[f"response_{lang}"]) or is_echo(r[f"response_{lang}"], r[f"prompt_{lang}"])]


def test_fidelity_counts_echoes_and_loops_apart():
    pairs = [("ko", ROWS[0]["response_ko"], ROWS[0]["prompt_ko"]), ("ko", ROWS[1]["prompt_ko"] * 2, ROWS[1]["prompt_ko"]),
             ("ko", "네, 네, 네, 네, 네, " * 12, ROWS[2]["prompt_ko"]), ("ko", ROWS[3]["response_en"], ROWS[3]["prompt_ko"])]
    assert fidelity(pairs) == {"fidelity": 0.5, "judged": 2, "unknown": 0, "echo": 1, "loop": 1, "total": 4}

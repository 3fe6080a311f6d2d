"""Language of a text, offline, and language fidelity (the share of answers in the query's language).

Uses lingua (`lingua-language-detector`), which ships its models and gives calibrated confidences. An answer is
judged among the languages in play (`in_play`): the prompt's language, English, the demo's target language and the
few languages chat models are seen to drift into (DRIFT), in lingua's high-accuracy mode, with the drift languages
weighted down (a short English answer full of names, "Paris is in France.", is not French). Judged among all of
lingua's 75 languages instead, short answers are often called the wrong one (measured: docs/serving.md). Texts too
short or too unsure to judge are "unknown", never a guess. A model whose language no statistical detector knows
brings its own detector (clo.models.table); the caller passes it as `detector` where that model is served.

    >>> from clo.evaluate.langid import detect
    >>> detect("Mji mkuu wa Kenya ni Nairobi.", lang="sw").code
    'sw'
    >>> detect("The capital of Japan is Tokyo.", lang="ko").code
    'en'
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Iterable

VERSION = 2  # how answers are judged; stored with every detected language (clo.evaluate.schema), so a Leaderboard
# re-judges what an older version stored. 1: among all of lingua's languages; 2: among the languages in play, echoed
# sentences of the prompt left out, echoes and loops apart
UNKNOWN = "unknown"
ECHO = "echo"  # the answer mostly repeats the prompt: not an answer in any language
LOOP = "loop"  # degenerate repetition ("la femme, la femme, la femme…"): not an answer either
ECHO_SHARE = 0.8  # of the answer's character trigrams found in the prompt
LOOP_RATIO = 0.45  # zlib's compressed size over the raw size of an answer's last LOOP_WINDOW characters, at or
LOOP_WINDOW = 120  # below which it is a loop (the sample's answers in four languages: 0.66 or more; SmolLM2's loops
LOOP_MIN_CHARS = 60  # of 60–100 characters, "Je, umai, umai, umai…": 0.15–0.40; below 60 zlib's overhead dominates)
MIN_LETTERS = 8  # fewer letters than this (CJK characters count double) cannot be judged among all languages
MIN_LETTERS_IN_PLAY = 4  # among the few languages in play a short answer ("Ndiyo.", "네.") can be
_NAME = re.compile(r"\b[A-ZÀ-ÖØ-Þ][\w'’-]*")  # a capitalised Latin word: most often a name ("Jakarta", "Kenya")
MIN_CONFIDENCE = 0.5
_CODE = re.compile(r"`[^`]*`|```.*?```", re.S)


@dataclass(frozen=True)
class Detection:
    code: str  # ISO 639-1, or "unknown"
    confidence: float  # 0..1 (0 for unknown texts)


# Languages chat models answer in when they miss the prompt's (SmolLM2 drifts into French; Qwen into Chinese)
DRIFT = ("fr", "es", "de", "pt", "zh")
DRIFT_WEIGHT = 0.25  # a drift language's prior weight against 1 for the prompt's language and English


@functools.lru_cache(maxsize=1)
def _lingua():
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


@functools.lru_cache(maxsize=None)
def known(code: str) -> bool:
    """Whether lingua has a model for the ISO 639-1 `code`."""
    from lingua import IsoCode639_1

    try:
        IsoCode639_1.from_str(code)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=16)
def _lingua_among(codes: tuple[str, ...]):
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_iso_codes_639_1(*(IsoCode639_1.from_str(c) for c in codes)).build()


def in_play(lang: str, *also: str) -> tuple[str, ...]:
    """The languages an answer to a `lang` prompt is judged among: `lang`, English, `also` (e.g. the demo's target
    language for an English prompt), then DRIFT; those lingua does not know are left out."""
    return tuple(c for c in dict.fromkeys((lang, "en", *also, *DRIFT)) if c and known(c))


def _letters(text: str) -> int:
    return sum(2 if "\u2e80" <= ch <= "\ufaff" or "\uac00" <= ch <= "\ud7af" else 1 for ch in text if ch.isalpha())


Detector = Callable[[str], "Detection | None"]  # a model's own detector: a Detection, or None to leave the text to lingua


def _trigrams(text: str) -> list[str]:
    squeezed = re.sub(r"[\W_]+", "", text.lower())
    return [squeezed[i:i + 3] for i in range(len(squeezed) - 2)]


def is_echo(answer: str, prompt: str, theirs: set[str] | None = None) -> bool:
    """Whether `answer` mostly repeats `prompt` (at least ECHO_SHARE of its character trigrams are the prompt's;
    `theirs`: the prompt's trigrams, when the caller has them)."""
    mine, theirs = _trigrams(answer), set(_trigrams(prompt)) if theirs is None else theirs
    return len(mine) >= 3 and sum(g in theirs for g in mine) >= ECHO_SHARE * len(mine)


# where a sentence or a quotation ends: after . ! ? and a space, right after a CJK full stop, at a line break, at
# a quotation mark ('… translates to "<the prompt again>"' is an English sentence around an echo)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|(?<=[。？！])|\n+|[\"“”«»「」]")


def without_echo(answer: str, prompt: str) -> str:
    """`answer` without the sentences that repeat `prompt` (SmolLM2 often opens with the question, then goes on in
    another language: "Kwa nini anga ni la buluu? The answer is…" is an English answer)."""
    theirs = set(_trigrams(prompt))
    kept = [s for s in _SENTENCE.split(answer) if s.strip() and not is_echo(s, prompt, theirs)]
    return " ".join(kept)


def is_loop(answer: str) -> bool:
    """Whether `answer` ends in degenerate repetition: its last LOOP_WINDOW characters compress to LOOP_RATIO of
    their size or less (a window, so that a long answer's ordinary redundancy does not count)."""
    import zlib

    tail = answer.strip()[-LOOP_WINDOW:]
    raw = tail.encode("utf-8")
    return len(tail) >= LOOP_MIN_CHARS and len(zlib.compress(raw, 9)) <= LOOP_RATIO * len(raw)


def detect(text: str, detector: Detector | None = None, *, lang: str | None = None, also: tuple[str, ...] = (),
           prompt: str | None = None) -> Detection:
    """The language of `text` without its code spans; "unknown" when too short or unsure.

    `lang` is the language of the prompt `text` answers: the text is judged among `in_play(lang, *also)`, the prompt's
    language and English at full weight, the drift languages at DRIFT_WEIGHT. Without it, among all of lingua's
    languages (version 1's judging, for a text that answers no known prompt). `detector` is the served model's own
    detector, for a language no statistical detector knows (clo.models.table: an entry's `detect`, e.g. one that
    judges by the model's vocabulary); it is asked first, and a None from it leaves the text to lingua. With `lang`,
    an answer that is a loop is LOOP, and one that mostly repeats its `prompt` is ECHO, before any language; the
    sentences of an answer that repeat its `prompt` are left out of its judging (`without_echo`).
    """
    if lang is not None and is_loop(text or ""):
        return Detection(LOOP, 0.0)
    prose = _CODE.sub(" ", text or "")
    if lang is not None and prompt:
        if is_echo(text or "", prompt):
            return Detection(ECHO, 0.0)
        rest = without_echo(prose, prompt)
        if _letters(rest) < _letters(prose):  # it opened with the prompt: what follows is the answer
            if _letters(rest) < MIN_LETTERS_IN_PLAY:
                return Detection(ECHO, 0.0)
            prose = rest
    if detector is not None:
        own = detector(prose)
        if own is not None:
            return own
    if lang is None:
        if _letters(prose) < MIN_LETTERS:
            return Detection(UNKNOWN, 0.0)
        best = _lingua().compute_language_confidence_values(prose)[0]
        if best.value < MIN_CONFIDENCE:
            return Detection(UNKNOWN, 0.0)
        return Detection(best.language.iso_code_639_1.name.lower(), round(best.value, 3))
    if _letters(prose) < (MIN_LETTERS_IN_PLAY if known(lang) else MIN_LETTERS):  # short: only the prompt's own language
        return Detection(UNKNOWN, 0.0)
    codes, full = in_play(lang, *also), {lang, "en", *also}
    weights = _weighted(prose, codes, full)
    # names sway a short answer towards their language ("Jakarta is the capital of Indonesia." reads Indonesian):
    # the words around them are judged too, and the two judgments averaged
    plain = _NAME.sub(" ", prose)
    if plain != prose and _letters(plain) >= MIN_LETTERS_IN_PLAY:
        around = _weighted(plain, codes, full)
        weights = {c: (weights[c] + around[c]) / 2 for c in weights}
    code, value = max(weights.items(), key=lambda kv: kv[1])
    if value < MIN_CONFIDENCE:
        return Detection(UNKNOWN, 0.0)
    return Detection(code, round(value, 3))


def _weighted(prose: str, codes: tuple[str, ...], full: set[str]) -> dict[str, float]:
    """lingua's confidences among `codes`, those outside `full` (the drift languages) weighted down, summing to 1."""
    values = {}
    for v in _lingua_among(codes).compute_language_confidence_values(prose):
        code = v.language.iso_code_639_1.name.lower()
        values[code] = v.value * (1.0 if code in full else DRIFT_WEIGHT)
    total = sum(values.values())
    return {c: (v / total if total else 0.0) for c, v in values.items()}


def warm(langs: Iterable[str]) -> None:
    """Load lingua's models for answers to prompts in `langs` and in English beside them (what Compare judges)."""
    for lang in langs:
        if known(lang):
            for text in ("Loading the language models for this answer.", "Mji mkuu ni Nairobi."):
                detect(text, lang=lang)
                detect(text, lang="en", also=(lang,))


def fidelity(pairs: Iterable[tuple], detector: Detector | None = None) -> dict[str, float | int]:
    """Language fidelity over (query language, answer text[, prompt]) tuples (`detector`: as for `detect`).

    Returns `code_fidelity`'s counts: the share of judged answers in the query's language, and apart from it the
    answers too short or unsure to judge, the echoes of their prompt and the loops.
    """
    return code_fidelity((lang, detect(answer, detector, lang=lang, prompt=rest[0] if rest else None).code)
                         for lang, answer, *rest in pairs)


def code_fidelity(pairs: Iterable[tuple[str, str]]) -> dict[str, float | int]:
    """`fidelity` over (query language, detected language code) pairs, for answers detected before (a stored vote).

    {"fidelity": share of judged answers in the query's language (NaN when none was judged), "judged", "unknown",
    "echo", "loop", "total"}: unknown answers, echoes and loops are counted, never judged.
    """
    counts = {UNKNOWN: 0, ECHO: 0, LOOP: 0}
    judged = hits = 0
    for lang, code in pairs:
        if code in counts:
            counts[code] += 1
            continue
        judged += 1
        hits += code == lang
    return {"fidelity": hits / judged if judged else float("nan"), "judged": judged, "unknown": counts[UNKNOWN],
            "echo": counts[ECHO], "loop": counts[LOOP], "total": judged + sum(counts.values())}

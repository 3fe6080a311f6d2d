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

UNKNOWN = "unknown"
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


def detect(text: str, detector: Detector | None = None, *, lang: str | None = None, also: tuple[str, ...] = ()) -> Detection:
    """The language of `text` without its code spans; "unknown" when too short or unsure.

    `lang` is the language of the prompt `text` answers: the text is judged among `in_play(lang, *also)`, the prompt's
    language and English at full weight, the drift languages at DRIFT_WEIGHT. Without it, among all of lingua's
    languages (version 1's judging, for a text that answers no known prompt). `detector` is the served model's own
    detector, for a language no statistical detector knows (clo.models.table: an entry's `detect`, e.g. one that
    judges by the model's vocabulary); it is asked first, and a None from it leaves the text to lingua.
    """
    prose = _CODE.sub(" ", text or "")
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
    values = {v.language.iso_code_639_1.name.lower(): v.value * (1.0 if v.language.iso_code_639_1.name.lower() in full
                                                                   else DRIFT_WEIGHT)
              for v in _lingua_among(codes).compute_language_confidence_values(prose)}
    total = sum(values.values())
    return {c: (v / total if total else 0.0) for c, v in values.items()}


def warm(langs: Iterable[str]) -> None:
    """Load lingua's models for answers to prompts in `langs` and in English beside them (what Compare judges)."""
    for lang in langs:
        if known(lang):
            for text in ("Loading the language models for this answer.", "Mji mkuu ni Nairobi."):
                detect(text, lang=lang)
                detect(text, lang="en", also=(lang,))


def fidelity(pairs: Iterable[tuple[str, str]], detector: Detector | None = None) -> dict[str, float | int]:
    """Language fidelity over (query language, answer text) pairs (`detector`: as for `detect`).

    Returns {"fidelity": share of judged answers in the query's language, "judged": answers with a known
    language, "unknown": answers too short or unsure, "total"}. Fidelity is NaN when nothing could be judged.
    """
    return code_fidelity((lang, detect(answer, detector, lang=lang).code) for lang, answer in pairs)


def code_fidelity(pairs: Iterable[tuple[str, str]]) -> dict[str, float | int]:
    """`fidelity` over (query language, detected language code) pairs, for answers detected before (a stored vote)."""
    judged = hits = unknown = 0
    for lang, code in pairs:
        if code == UNKNOWN:
            unknown += 1
            continue
        judged += 1
        hits += code == lang
    return {"fidelity": hits / judged if judged else float("nan"), "judged": judged, "unknown": unknown, "total": judged + unknown}

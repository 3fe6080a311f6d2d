"""Language of a text, offline, and language fidelity (the share of answers in the query's language).

Uses lingua (`lingua-language-detector`), which ships its models: unlike langid-style detectors it gives
calibrated confidences across languages and is reliable on the short texts chat answers often are, and it
covers all six of the paper's languages (zh, de, ko, id, sw, yo). Texts too short or too ambiguous to
judge are "unknown", never a guess.

    >>> from clo.langid import detect
    >>> detect("Habari ya asubuhi, rafiki yangu.").code
    'sw'
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterable

UNKNOWN = "unknown"
MIN_LETTERS = 8  # fewer letters than this (CJK characters count double) cannot be judged
MIN_CONFIDENCE = 0.5
_CODE = re.compile(r"`[^`]*`|```.*?```", re.S)


@dataclass(frozen=True)
class Detection:
    code: str  # ISO 639-1, or "unknown"
    confidence: float  # 0..1 (0 for unknown texts)


@functools.lru_cache(maxsize=1)
def _detector():
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


def _letters(text: str) -> int:
    return sum(2 if "\u2e80" <= ch <= "\ufaff" or "\uac00" <= ch <= "\ud7af" else 1 for ch in text if ch.isalpha())


def detect(text: str) -> Detection:
    """The language of `text` without its code spans; "unknown" when too short or unsure.

    A text written only in the miniature's vocabulary (clo.miniature) is judged by its words: "mini" or "en",
    exactly; no statistical detector knows the invented language.
    """
    prose = _CODE.sub(" ", text or "")
    mini = _miniature(prose)
    if mini is not None:
        return mini
    if _letters(prose) < MIN_LETTERS:
        return Detection(UNKNOWN, 0.0)
    best = _detector().compute_language_confidence_values(prose)[0]
    if best.value < MIN_CONFIDENCE:
        return Detection(UNKNOWN, 0.0)
    return Detection(best.language.iso_code_639_1.name.lower(), round(best.value, 3))


def _miniature(text: str) -> Detection | None:
    from clo.miniature.world import CODE, WORLD, tokens

    words = [w for w in tokens(text) if w.isalpha()]
    if not words or not all(w in WORLD.lexicon or w in WORLD.inverse for w in words):
        return None
    lang = WORLD.language_of(text)
    return Detection(lang, 1.0) if lang in (CODE, "en") else Detection(UNKNOWN, 0.0)  # else: words of both


def fidelity(pairs: Iterable[tuple[str, str]]) -> dict[str, float | int]:
    """Language fidelity over (query language, answer text) pairs.

    Returns {"fidelity": share of judged answers in the query's language, "judged": answers with a known
    language, "unknown": answers too short or unsure, "total"}. Fidelity is NaN when nothing could be judged.
    """
    return code_fidelity((lang, detect(answer).code) for lang, answer in pairs)


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

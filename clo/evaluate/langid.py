"""Language of a text, offline, and language fidelity (the share of answers in the query's language).

Uses lingua (`lingua-language-detector`), which ships its models: unlike langid-style detectors it gives
calibrated confidences across languages and is reliable on the short texts chat answers often are, and it
covers all six of the paper's languages (zh, de, ko, id, sw, yo). Texts too short or too ambiguous to
judge are "unknown", never a guess. A model whose language no statistical detector knows brings its own
detector (clo.models.table); the caller passes it as `detector` where that model is served.

    >>> from clo.evaluate.langid import detect
    >>> detect("Habari ya asubuhi, rafiki yangu.").code
    'sw'
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, Iterable

UNKNOWN = "unknown"
MIN_LETTERS = 8  # fewer letters than this (CJK characters count double) cannot be judged
MIN_CONFIDENCE = 0.5
_CODE = re.compile(r"`[^`]*`|```.*?```", re.S)


@dataclass(frozen=True)
class Detection:
    code: str  # ISO 639-1, or "unknown"
    confidence: float  # 0..1 (0 for unknown texts)


@functools.lru_cache(maxsize=1)
def _lingua():
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


def _letters(text: str) -> int:
    return sum(2 if "\u2e80" <= ch <= "\ufaff" or "\uac00" <= ch <= "\ud7af" else 1 for ch in text if ch.isalpha())


Detector = Callable[[str], "Detection | None"]  # a model's own detector: a Detection, or None to leave the text to lingua


def detect(text: str, detector: Detector | None = None) -> Detection:
    """The language of `text` without its code spans; "unknown" when too short or unsure.

    `detector` is the served model's own detector, for a language no statistical detector knows (clo.models.table: an
    entry's `detect`, e.g. one that judges by the model's vocabulary); it is asked first, and a None from it leaves
    the text to lingua. Without one, every text goes to lingua.
    """
    prose = _CODE.sub(" ", text or "")
    if detector is not None:
        own = detector(prose)
        if own is not None:
            return own
    if _letters(prose) < MIN_LETTERS:
        return Detection(UNKNOWN, 0.0)
    best = _lingua().compute_language_confidence_values(prose)[0]
    if best.value < MIN_CONFIDENCE:
        return Detection(UNKNOWN, 0.0)
    return Detection(best.language.iso_code_639_1.name.lower(), round(best.value, 3))


def fidelity(pairs: Iterable[tuple[str, str]], detector: Detector | None = None) -> dict[str, float | int]:
    """Language fidelity over (query language, answer text) pairs (`detector`: as for `detect`).

    Returns {"fidelity": share of judged answers in the query's language, "judged": answers with a known
    language, "unknown": answers too short or unsure, "total"}. Fidelity is NaN when nothing could be judged.
    """
    return code_fidelity((lang, detect(answer, detector).code) for lang, answer in pairs)


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

"""Target languages: ISO 639-1 codes and each translator's own code, in one table (plus the miniature's "mini").

    >>> from clo.languages import language
    >>> language("ko").nllb
    'kor_Hang'
"""

from __future__ import annotations

from dataclasses import dataclass

from clo import CLOError


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1
    name: str
    m2m100: str | None  # M2M100 language code (its tokenizer's `__xx__` token without the underscores)
    nllb: str | None  # NLLB-200 / FLORES-200 code
    tier: str  # resource tier in the CLO paper's sense: high, mid or low; "synthetic" for the miniature


_TABLE = [
    Language("en", "English", "en", "eng_Latn", "high"),
    Language("zh", "Chinese", "zh", "zho_Hans", "high"),
    Language("de", "German", "de", "deu_Latn", "high"),
    Language("fr", "French", "fr", "fra_Latn", "high"),
    Language("es", "Spanish", "es", "spa_Latn", "high"),
    Language("ja", "Japanese", "ja", "jpn_Jpan", "high"),
    Language("ru", "Russian", "ru", "rus_Cyrl", "high"),
    Language("pt", "Portuguese", "pt", "por_Latn", "high"),
    Language("it", "Italian", "it", "ita_Latn", "high"),
    Language("ko", "Korean", "ko", "kor_Hang", "mid"),
    Language("id", "Indonesian", "id", "ind_Latn", "mid"),
    Language("vi", "Vietnamese", "vi", "vie_Latn", "mid"),
    Language("th", "Thai", "th", "tha_Thai", "mid"),
    Language("ar", "Arabic", "ar", "arb_Arab", "mid"),
    Language("hi", "Hindi", "hi", "hin_Deva", "mid"),
    Language("tr", "Turkish", "tr", "tur_Latn", "mid"),
    Language("sw", "Swahili", "sw", "swh_Latn", "low"),
    Language("yo", "Yoruba", "yo", "yor_Latn", "low"),
    Language("bn", "Bengali", "bn", "ben_Beng", "low"),
    Language("ha", "Hausa", "ha", "hau_Latn", "low"),
    Language("am", "Amharic", "am", "amh_Ethi", "low"),
    # the invented language of clo.miniature; its translation is a function (--data miniature), not a model
    Language("mini", "Miniature (synthetic)", None, None, "synthetic"),
]

LANGUAGES: dict[str, Language] = {lang.code: lang for lang in _TABLE}


def language(code: str) -> Language:
    """The table entry for an ISO 639-1 code; a clear error for anything else."""
    key = str(code).strip().lower()
    if key not in LANGUAGES:
        known = ", ".join(sorted(LANGUAGES))
        raise CLOError(f"unknown language code {code!r}: use an ISO 639-1 code, one of {known}")
    return LANGUAGES[key]

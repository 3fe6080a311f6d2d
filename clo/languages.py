"""Target languages: ISO 639-1 codes and each translator's own code, in one table.

A language no translator knows (an offline model's invented one) is not in the table: the model that brings it
registers it (`register`; clo.models.table does so for its entries), and `language` finds it there.

    >>> from clo.languages import language
    >>> language("ko").nllb
    'kor_Hang'
    >>> language("ko-KR").code, language("KOR").code, language("zh-Hans").code
    ('ko', 'ko', 'zh')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clo import CLOError


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1
    name: str
    m2m100: str | None  # M2M100 language code (its tokenizer's `__xx__` token without the underscores)
    nllb: str | None  # NLLB-200 / FLORES-200 code
    tier: str  # resource tier in the CLO paper's sense: high, mid or low; "synthetic" for an invented language


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
]

LANGUAGES: dict[str, Language] = {lang.code: lang for lang in _TABLE}

# Other spellings of the table's languages, mapped to its code: ISO 639-2/T and /B and 639-3 codes (kor, deu, ger,
# zho, chi, swa, swh, ...), the English names, and "in" (Indonesian's withdrawn code). A region or script tag is
# dropped (ko-KR, sw_KE, kor_Hang, zh-Hans, zh-CN), except Traditional Chinese, which the table does not have.
ALIASES: dict[str, str] = {
    "eng": "en", "zho": "zh", "chi": "zh", "cmn": "zh", "deu": "de", "ger": "de", "fra": "fr", "fre": "fr",
    "spa": "es", "jpn": "ja", "rus": "ru", "por": "pt", "ita": "it", "kor": "ko", "ind": "id", "in": "id",
    "vie": "vi", "tha": "th", "ara": "ar", "arb": "ar", "hin": "hi", "tur": "tr", "swa": "sw", "swh": "sw",
    "yor": "yo", "ben": "bn", "hau": "ha", "amh": "am",
    **{lang.name.lower(): lang.code for lang in _TABLE},
}
_TRADITIONAL = {"hant", "tw", "hk", "mo"}  # zh-Hant, zh-TW, zh-HK, zh-MO: written in Traditional characters
_REGISTERED: dict[str, Language] = {}  # languages outside the table, each brought by a model (see `register`)


def register(lang: Language) -> None:
    """Make `language` know a language outside the table, by its code only (an offline model's invented language:
    clo.models.table registers those of its entries). A code of the table cannot be registered again."""
    if lang.code in LANGUAGES or lang.code in ALIASES:
        raise CLOError(f"language code {lang.code!r} is in the table already")
    _REGISTERED[lang.code] = lang


def registered() -> dict[str, Language]:
    """The languages outside the table that the offline models brought.

    Each entry of clo.models registers its languages (clo.models.table.register) when the package clo.models loads,
    its __init__ importing every entry; so the package is loaded first, here, to have them all."""
    # A lazy, upward import on purpose: clo.models imports this leaf at its top, so a module-level import would be a
    # cycle; and it is the package, not clo.models.table, whose loading registers the entries.
    import clo.models  # noqa: F401  (loaded for its side effect: the entries' languages are registered)

    return dict(_REGISTERED)


def language(code: str) -> Language:
    """The table entry for a language code in any common form: ko, KO, kor, ko-KR, zh-Hans, zh-CN, swh, Korean, ...,
    or a language a model registered (by its code).

    Anything else is one sentence listing the known codes.
    """
    key = str(code).strip().lower()
    if key in LANGUAGES:
        return LANGUAGES[key]
    if key in ALIASES:
        return LANGUAGES[ALIASES[key]]
    extra = registered()
    if key in extra:
        return extra[key]
    known = ", ".join(sorted(LANGUAGES | extra))
    primary, *tags = re.split(r"[-_]", key) if key else [""]
    primary = ALIASES.get(primary, primary)
    if primary == "zh" and _TRADITIONAL & set(tags):
        raise CLOError(f"language code {code!r} is Traditional Chinese, which the table lacks (its zh is Simplified, "
                       f"zho_Hans): use zh, or another known code: {known}")
    if tags and primary in LANGUAGES and all(re.fullmatch(r"[a-z]{2}|[0-9]{3}|[a-z]{4}", t) for t in tags):
        return LANGUAGES[primary]
    raise CLOError(f"unknown language code {code!r}: use an ISO 639-1 code, one of {known}")


def lang_code(code: str) -> str:
    """The table's code for `code` in any form `language` accepts (kor, KO, ko-KR → ko)."""
    return language(code).code

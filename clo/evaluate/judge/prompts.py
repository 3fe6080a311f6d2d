"""The prompts a judging run answers: the shipped sample, its held-out fifth, a JSONL file, or a hub prompt set.

    pairs = load_prompt_pairs("sample", "ko", limit=50)     # PromptPair(id, target=Korean prompt, english=its English)

Each prompt comes in the target language and in English, so a run judges both (`python -m clo judge`). Rows given
only in English (a hub set such as tatsu-lab/alpaca_eval) are translated by the project's translator
(clo.train.data, cached under --cache-dir); hub sets are read through clo.hub (offline when it says so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clo import CLOError
from clo.evaluate.judge.client import excerpt

# hub prompt sets read from one file in the dataset repo (AlpacaEval's 805 instructions: English only)
HUB_PROMPT_SETS = {"tatsu-lab/alpaca_eval": ("alpaca_eval.json", "instruction")}


@dataclass
class PromptPair:
    id: str
    target: str | None  # the prompt in the target language
    english: str | None  # its English version


def load_prompt_pairs(source: str, lang: str, limit: int | None = None, translator: str = "m2m100",
                      translator_model: str | None = None, cache_dir: str = "cache") -> list[PromptPair]:
    """Prompts in `lang` and their English versions from "sample" (assets/sample), "held-out" (the sample's rows that
    no shipped adapter or `python -m clo replicate` trains on: every fifth), a JSONL file (fields prompt_en or
    instruction for English, prompt_<lang> or prompt for the target language) or a hub prompt set; the first `limit`.
    Rows with only English are translated by the project's translator (clo.train.data, cached)."""
    from clo.train.data import SAMPLE, read_records

    if limit is not None and limit < 1:
        raise CLOError(f"--limit must be ≥ 1, got {limit}")
    if source == "held-out":
        from clo.experiments.replicate import HELD_OUT_EVERY

        records = [r for k, r in enumerate(read_records(SAMPLE)) if k % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    elif source == "sample" or Path(source).exists() or source.endswith((".jsonl", ".json")) or "/" not in source:
        path = SAMPLE if source == "sample" else Path(source)
        if not path.is_file():
            raise CLOError(f"prompt file {path} does not exist")
        records = list(read_records(path))
    else:
        records = _hub_records(source)
    pairs = []
    for where, record in records[:limit] if limit else records:
        english = _field(record, ("prompt_en", "instruction"), where)
        target = english if lang == "en" else _field(record, (f"prompt_{lang}", "prompt"), where)
        if english is None and target is None:
            raise CLOError(f"{where}: no prompt: give 'prompt_en' (or 'instruction') and/or 'prompt_{lang}'")
        pairs.append(PromptPair(str(record.get("id", where)), target, english))
    if not pairs:
        raise CLOError(f"no prompts in {source}: nothing to judge")
    missing = [p for p in pairs if p.target is None]
    if missing:
        from clo.train.data import HFTranslator, TranslationCache, translate_cached

        engine = HFTranslator(translator, translator_model)
        done = translate_cached(engine, [p.english for p in missing], "en", lang, TranslationCache(Path(cache_dir) / "translations.sqlite"))
        for p, text in zip(missing, done):
            if not text.strip():
                raise CLOError(f"the translator {engine.model_id} gave an empty {lang} translation of prompt {p.id} "
                               f"({excerpt(p.english, 60)}); give that row a 'prompt_{lang}'")
            p.target = text
    return pairs


def _field(record: dict, keys: tuple[str, ...], where: str) -> str | None:
    for key in keys:
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise CLOError(f"{where}: '{key}' must be text, got {type(value).__name__}")
        if value.strip():
            return value
    return None


def _hub_records(source: str) -> list[tuple[str, dict]]:
    """A hub prompt set's rows, through clo.hub: offline and not cached, the project's one-sentence hub message."""
    from clo.hub import explain_missing, locate

    where = locate(source, kind="dataset", flag="--prompts")
    with explain_missing(where):
        if source in HUB_PROMPT_SETS:
            from huggingface_hub import hf_hub_download

            filename, field_name = HUB_PROMPT_SETS[source]
            path = hf_hub_download(source, filename, repo_type="dataset", local_files_only=where.local_files_only)
            rows = json.loads(Path(path).read_text(encoding="utf-8"))
            return [(f"{source} row {i}", {"id": str(i), "prompt_en": row[field_name]}) for i, row in enumerate(rows)]
        import datasets

        offline = datasets.config.HF_HUB_OFFLINE
        try:
            datasets.config.HF_HUB_OFFLINE = offline or where.local_files_only
            ds = datasets.load_dataset(where.name, split="train")
        finally:
            datasets.config.HF_HUB_OFFLINE = offline
    return [(f"{source} row {i}", dict(row)) for i, row in enumerate(ds)]


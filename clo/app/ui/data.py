"""Data tab: the cross-lingual pairs a run trains on, English and target side by side, chosen / rejected marked.

A language that only a named source has (an offline model's own language, clo.models.table) is previewed from that
source; the served model's notes about its language (for an invented one: its lexicon and word order) follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from clo import CLOError
from clo.config import DataConfig
from clo.train.data import build_pairs, named_sources
from clo.languages import language
from clo.app.context import Services
from clo.app.ui.refusal import refusal

MAX_PREVIEW = 50


def preview_pairs(lang: str, pairs: int, source: str = "sample") -> pd.DataFrame:
    """For each query, its chosen and its rejected answer: y_l ≻ y_en for x_l, y_en ≻ y_l for x_en.

    A visitor's call: only translations already in the data are shown (no translation model is loaded on the
    server for it), and at most MAX_PREVIEW pairs, so the cache it fills stays small."""
    try:
        pairs = min(max(int(pairs or 1), 1), MAX_PREVIEW)
        source = next((s.name for s in named_sources().values() if s.language == lang), source)
        data = build_pairs(DataConfig(target_lang=lang, pairs=pairs, source=source, translator="file"))
    except CLOError as e:
        raise refusal(e) from None
    rows = []
    for r in data.rows:
        rows.append({"query": f"x_{lang}: {r['prompt_tgt']}", "chosen": r["response_tgt"], "rejected": r["response_en"]})
        rows.append({"query": f"x_en: {r['prompt_en']}", "chosen": r["response_en"], "rejected": r["response_tgt"]})
    return pd.DataFrame(rows)



@dataclass(frozen=True)
class DataTab:
    """What build_app wires from the Data tab (its preview is filled on load)."""

    lang: object  # the language dropdown
    pairs: object  # the number of pairs
    table: object  # the pairs shown

def build(services: Services):
    languages = list(services.examples) or ["ko"]
    with gr.Row():
        lang = gr.Dropdown([(f"{language(c).name} ({c})", c) for c in languages], value=languages[0],
                           label="Target language")
        pairs = gr.Slider(1, MAX_PREVIEW, value=5, step=1, label="Pairs")
    table = gr.Dataframe(wrap=True, label="Cross-lingual preference pairs")
    notes = services.entry.notes() if services.entry else None  # what the served model says about its language
    if notes:
        title, text, words = notes
        with gr.Accordion(title, open=True):
            gr.Markdown(text)
            gr.Dataframe(words, show_label=False, max_height=400)
    for trigger in (lang.change, pairs.change):
        trigger(preview_pairs, [lang, pairs], table, api_visibility="private")
    return DataTab(lang=lang, pairs=pairs, table=table)

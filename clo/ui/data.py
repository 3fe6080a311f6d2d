"""Data tab: the cross-lingual pairs a run trains on, English and target side by side, chosen / rejected marked."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from clo import CLOError
from clo.config import DataConfig
from clo.data import build_pairs
from clo.languages import LANGUAGES


def preview_pairs(lang: str, pairs: int, source: str = "sample") -> pd.DataFrame:
    """For each query, its chosen and its rejected answer: y_l ≻ y_en for x_l, y_en ≻ y_l for x_en."""
    try:
        data = build_pairs(DataConfig(target_lang=lang, pairs=int(pairs), source=source))
    except CLOError as e:
        raise gr.Error(str(e)) from None
    rows = []
    for r in data.rows:
        rows.append({"query": f"x_{lang}: {r['prompt_tgt']}", "chosen ✓": r["response_tgt"], "rejected ✗": r["response_en"]})
        rows.append({"query": f"x_en: {r['prompt_en']}", "chosen ✓": r["response_en"], "rejected ✗": r["response_tgt"]})
    return pd.DataFrame(rows)


def build(languages: list[str]) -> None:
    with gr.Row():
        lang = gr.Dropdown([(f"{LANGUAGES[c].name} ({c})", c) for c in languages], value=languages[0], label="Target language")
        pairs = gr.Slider(1, 50, value=5, step=1, label="Pairs")
    table = gr.Dataframe(wrap=True, label="Cross-lingual preference pairs (the shipped sample)")
    for trigger in (lang.change, pairs.change):
        trigger(preview_pairs, [lang, pairs], table, api_visibility="private")
    return lang, pairs, table

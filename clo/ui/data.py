"""Data tab: the cross-lingual pairs a run trains on, English and target side by side, chosen / rejected marked.

For the synthetic miniature (language "mini") it also shows the lexicon and the word-order rule, so its
answers can be read.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from clo import CLOError
from clo.config import DataConfig
from clo.data import build_pairs
from clo.languages import LANGUAGES
from clo.miniature.world import CODE, HEADS, WORLD


MAX_PREVIEW = 50


def preview_pairs(lang: str, pairs: int, source: str = "sample") -> pd.DataFrame:
    """For each query, its chosen and its rejected answer: y_l ≻ y_en for x_l, y_en ≻ y_l for x_en.

    A visitor's call: only translations already in the data are shown (no translation model is loaded on the
    server for it), and at most MAX_PREVIEW pairs, so the cache it fills stays small."""
    try:
        pairs = min(max(int(pairs or 1), 1), MAX_PREVIEW)
        data = build_pairs(DataConfig(target_lang=lang, pairs=pairs, source="miniature" if lang == CODE else source,
                                      translator="file"))
    except CLOError as e:
        raise gr.Error(str(e)) from None
    rows = []
    for r in data.rows:
        rows.append({"query": f"x_{lang}: {r['prompt_tgt']}", "chosen ✓": r["response_tgt"], "rejected ✗": r["response_en"]})
        rows.append({"query": f"x_en: {r['prompt_en']}", "chosen ✓": r["response_en"], "rejected ✗": r["response_tgt"]})
    return pd.DataFrame(rows)


def lexicon() -> pd.DataFrame:
    """The miniature's word list: each English word, its invented counterpart, and whether it moves to the clause end."""
    return pd.DataFrame([{"English": en, LANGUAGES[CODE].name: tgt, "clause-final": "yes" if en in HEADS else ""}
                         for en, tgt in WORLD.lexicon.items()])


def build(languages: list[str]) -> None:
    with gr.Row():
        lang = gr.Dropdown([(f"{LANGUAGES[c].name} ({c})", c) for c in languages], value=languages[0], label="Target language")
        pairs = gr.Slider(1, MAX_PREVIEW, value=5, step=1, label="Pairs")
    table = gr.Dataframe(wrap=True, label="Cross-lingual preference pairs")
    with gr.Accordion("The miniature's language: lexicon and word order", open=CODE in languages):
        gr.Markdown(
            "The synthetic target language of `python -m clo miniature`. Every English word has one invented word; "
            "numbers and punctuation are shared. Word order: a clause that opens with a verb or question word moves it "
            "to the clause's end (*reverse the words : cat dog* → *the words reverse : cat dog*, then word by word)."
        )
        gr.Dataframe(lexicon(), label="Lexicon", max_height=400)
    for trigger in (lang.change, pairs.change):
        trigger(preview_pairs, [lang, pairs], table, api_visibility="private")
    return lang, pairs, table

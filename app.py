"""The Gradio app (Hugging Face Space entry point). For now: a preview of the cross-lingual pairs CLO trains on.

    python app.py            # then open http://127.0.0.1:7860
"""

import os

import gradio as gr
import pandas as pd

from clo import CLOError
from clo.config import DataConfig
from clo.data import build_pairs
from clo.languages import LANGUAGES

SAMPLE_LANGS = ["ko", "zh", "sw"]


def preview_pairs(lang: str, pairs: int) -> pd.DataFrame:
    """The cross-lingual rows of the shipped sample: for each query, the chosen and the rejected answer."""
    try:
        data = build_pairs(DataConfig(target_lang=lang, pairs=int(pairs), source="sample"))
    except CLOError as e:
        raise gr.Error(str(e)) from None
    return pd.DataFrame(
        [
            {"query": f"x_{lang}: {r['prompt_tgt']}", "chosen": r["response_tgt"], "rejected": r["response_en"]}
            for r in data.rows
        ]
        + [{"query": f"x_en: {r['prompt_en']}", "chosen": r["response_en"], "rejected": r["response_tgt"]} for r in data.rows]
    )


with gr.Blocks(title="Cross-Lingual Optimization") as demo:
    gr.Markdown(
        "# Cross-Lingual Optimization (CLO)\n"
        "CLO (Lee et al., ACL 2025) teaches an English-centric chat model a target language from English SFT data "
        "and a translation model: for a target-language query it prefers the target-language answer, for an English "
        "query the English one, plus NLL on the target-language answers. Train from the command line: "
        "`python -m clo train --config recipes/demo.yaml`."
    )
    with gr.Tab("Data"):
        with gr.Row():
            lang = gr.Dropdown([(f"{LANGUAGES[c].name} ({c})", c) for c in SAMPLE_LANGS], value="ko", label="Target language")
            pairs = gr.Slider(1, 50, value=5, step=1, label="Pairs")
        table = gr.Dataframe(wrap=True, label="Cross-lingual preference pairs")
        for trigger in (lang.change, pairs.change, demo.load):
            trigger(preview_pairs, [lang, pairs], table, api_name=False)

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("CLO_HOST", "127.0.0.1"), server_port=int(os.environ.get("CLO_PORT", "7860")))

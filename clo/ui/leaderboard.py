"""Leaderboard tab: W/T/L, win-rate matrix, Bradley–Terry with intervals, language fidelity, votes to download.

API: `/leaderboard` (language or "all") -> the tables as lists of records.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from clo.langid import fidelity
from clo.ratings import leaderboard
from clo.ui.services import Services
from clo.votes import export_votes

ALL = "all"


def answer_fidelity(votes: pd.DataFrame) -> pd.DataFrame:
    """Per variant, the share of its (judged) answers in the prompt's language, over every stored vote."""
    rows = []
    for variant in sorted(set(votes.variant_a) | set(votes.variant_b)):
        pairs = [(r.language, r.answer_a) for r in votes.itertuples() if r.variant_a == variant]
        pairs += [(r.language, r.answer_b) for r in votes.itertuples() if r.variant_b == variant]
        f = fidelity(pairs)
        rows.append({"variant": variant, "fidelity": round(f["fidelity"], 3), "judged": f["judged"], "unknown": f["unknown"]})
    return pd.DataFrame(rows, columns=["variant", "fidelity", "judged", "unknown"])


def tables(services: Services, language: str | None) -> dict[str, pd.DataFrame]:
    language = None if language in (None, "", ALL) else language
    votes = services.store.votes()
    if votes.empty:
        return {}
    out = leaderboard(votes, language=language)
    scoped = votes if language is None else votes[votes.language == language]
    out["fidelity"] = answer_fidelity(scoped)
    return out


def rating_plot(bt: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.5 * max(len(bt), 1)))
    if not bt.empty:
        order = bt.sort_values("rating")
        ax.barh(order["variant"], order["rating"] - 1000, left=1000,
                xerr=[order["rating"] - order["lower"], order["upper"] - order["rating"]], capsize=4, color="#6366f1")
        ax.axvline(1000, color="grey", lw=0.8)
        ax.set_xlabel("Bradley–Terry rating (95% bootstrap interval)")
    fig.tight_layout()
    return fig


def build(services: Services) -> None:
    choices = [("All languages", ALL)] + [(c, c) for c in services.examples]
    with gr.Row():
        lang = gr.Dropdown(choices, value=ALL, label="Language")
        refresh = gr.Button("Refresh")
        download = gr.DownloadButton("Download votes (CSV)")
        download_parquet = gr.DownloadButton("Download votes (Parquet)")
    status = gr.Markdown()
    plot = gr.Plot(label="Ratings")
    with gr.Row():
        wtl = gr.Dataframe(label="CLO wins / ties / losses")
        bt = gr.Dataframe(label="Bradley–Terry (ties count half; both_bad excluded)")
    with gr.Row():
        win_rate = gr.Dataframe(label="Win rate: row beats column")
        fid = gr.Dataframe(label="Language fidelity of the answers")
    summary = gr.Dataframe(label="Votes (named side-by-side votes are stored but not rated)")
    timer = gr.Timer(15)

    def update(code):
        t = tables(services, code)
        if not t:
            return ["*no votes yet: judge a few battles in the Arena*", None] + [None] * 5
        n = int(t["summary"].loc[t["summary"]["language"] == ("all" if code in (None, ALL) else code), "rated"].sum()) \
            if "rated" in t["summary"] else 0
        return [f"{n} rated votes", rating_plot(t["bradley_terry"]), t["wtl"], t["bradley_terry"],
                t["win_rate"].reset_index(names="variant"), t["fidelity"], t["summary"]]

    def export(fmt: str):
        folder = Path(tempfile.mkdtemp(prefix="clo-votes-"))
        return str(export_votes(services.store, folder / f"votes.{fmt}"))

    outputs = [status, plot, wtl, bt, win_rate, fid, summary]
    for trigger in (lang.change, refresh.click, timer.tick):
        trigger(update, lang, outputs, api_visibility="private")
    download.click(lambda: export("csv"), None, download, api_visibility="private")
    download_parquet.click(lambda: export("parquet"), None, download_parquet, api_visibility="private")

    def api(language: str = ALL) -> dict:
        """The leaderboard tables for one language ("all" for every language), as lists of records."""
        t = tables(services, language)
        return {k: v.reset_index().to_dict(orient="records") if k in ("win_rate", "battles") else v.to_dict(orient="records")
                for k, v in t.items()}

    gr.api(api, api_name="leaderboard")
    return lang, update, outputs

"""Leaderboard tab: W/T/L, win-rate matrix, Bradley–Terry with intervals, language fidelity, votes to download.

Counts and win rates show from the first vote; ratings (Bradley–Terry, its chart, Elo) only once every pair that
met has enough votes, with a sentence saying how far off that is (clo.ratings.rating_note). A variant retrained
under the same name is rated apart, as `name@hash`.

API: `/leaderboard` (language or "all") -> {"note": str or None, table name: list of records}.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from clo.langid import code_fidelity, detect
from clo.ratings import COUNTS, leaderboard, version_keys
from clo.ui.services import Services
from clo.votes import export_votes

ALL = "all"
# the columns of each table as shown, so an empty table still has its real headers
SHOWN = {
    "wtl": ["opponent", *COUNTS, "battles", "win %", "tie %", "loss %", "both_bad %"],
    "bradley_terry": ["variant", "rating", "lower", "upper", "battles"],
    "win_rate": ["variant"],
    "fidelity": ["variant", "fidelity", "judged", "unknown"],
    "summary": ["language", "stored", "named", "rated", "a", "b", "tie", "both_bad"],
}


def answer_fidelity(votes: pd.DataFrame) -> pd.DataFrame:
    """Per variant (a retrained one apart, as in the ratings), the share of its answers in the prompt's language,
    from the language detected when each battle was made (older votes without it are detected here)."""
    votes = version_keys(votes)
    rows = []
    for variant in sorted(set(votes.variant_a) | set(votes.variant_b)):
        pairs = []
        for side in ("a", "b"):
            mine = votes[votes[f"variant_{side}"] == variant]
            stored = mine[f"lang_{side}"] if f"lang_{side}" in mine else pd.Series(None, index=mine.index)
            pairs += [(lang, code if isinstance(code, str) else detect(text).code)
                      for lang, code, text in zip(mine["language"], stored, mine[f"answer_{side}"])]
        f = code_fidelity(pairs)
        rows.append({"variant": variant, "fidelity": f["fidelity"], "judged": f["judged"], "unknown": f["unknown"]})
    return pd.DataFrame(rows, columns=SHOWN["fidelity"])


def tables(services: Services, language: str | None, votes: pd.DataFrame | None = None) -> dict:
    language = None if language in (None, "", ALL) else language
    votes = services.store.votes() if votes is None else votes
    if votes.empty:
        return {}
    out = leaderboard(votes, language=language)
    scoped = votes if language is None else votes[votes.language == language]
    out["fidelity"] = answer_fidelity(scoped)
    return out


class Board:
    """The tables and the export files (CSV, Parquet), computed again only when a vote was added (keyed on the
    store's count) and shared by every open page: a refresh without a new vote costs one COUNT query, and a
    download button already holds its file, so one click downloads it."""

    def __init__(self, services: Services):
        self.services, self.lock = services, threading.Lock()
        self.key, self.votes, self.cached, self.computed, self.files = None, None, {}, 0, {}
        self.folder = Path(tempfile.mkdtemp(prefix="clo-votes-"))

    def get(self, language: str | None) -> tuple[dict, dict[str, str]]:
        with self.lock:
            key = self.services.store.count()
            if key != self.key:
                self.key, self.votes, self.cached = key, self.services.store.votes(), {}
                self._export(key[0])
            if language not in self.cached:
                self.cached[language] = tables(self.services, language, self.votes)
                self.computed += 1
            return self.cached[language], self.files

    def _export(self, n: int) -> None:
        old, self.files = self.files, {fmt: str(export_votes(self.services.store, self.folder / f"votes-{n}.{fmt}"))
                                       for fmt in ("csv", "parquet")}
        for path in set(old.values()) - set(self.files.values()):  # Gradio serves its own cached copy
            Path(path).unlink(missing_ok=True)


def shown(name: str, frame: pd.DataFrame | None) -> pd.DataFrame:
    """A table as the page shows it: rounded (ratings to the point, shares in % to 0.1), real headers when empty."""
    if frame is None or frame.empty:
        return pd.DataFrame(columns=SHOWN.get(name, ["variant"]))
    frame = frame.copy()
    if name == "wtl":
        frame = frame.rename(columns={f"{k}_pct": f"{k} %" for k in ("win", "tie", "loss", "both_bad")})
    elif name == "bradley_terry":
        frame[["rating", "lower", "upper"]] = frame[["rating", "lower", "upper"]].round(0)
    elif name == "win_rate":
        frame = (100 * frame).round(1)
        frame.columns = [f"{c} (%)" for c in frame.columns]
        frame = frame.reset_index(names="variant")
    elif name == "fidelity":
        frame["fidelity"] = (100 * frame["fidelity"]).round(1)
        frame = frame.rename(columns={"fidelity": "fidelity (%)"})
    return frame.round(1)


def rating_plot(bt: pd.DataFrame):
    """Ratings as bars from 1000 with their 95% intervals; a variant without an interval (the anchor) has none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if bt.empty:
        return None
    order = bt.sort_values("rating")
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.5 * len(order)))
    below = (order["rating"] - order["lower"]).fillna(0).clip(lower=0)  # never negative (matplotlib refuses)
    above = (order["upper"] - order["rating"]).fillna(0).clip(lower=0)
    names = [v + (" (anchor)" if np.isnan(lo) else "") for v, lo in zip(order["variant"], order["lower"])]
    ax.barh(names, order["rating"] - 1000, left=1000, xerr=[below, above], capsize=4, color="#6366f1")
    ax.axvline(1000, color="grey", lw=0.8)
    ax.set_xlabel("Bradley–Terry rating (95% bootstrap interval)")
    fig.tight_layout()
    return fig


def build(services: Services):
    choices = [("All languages", ALL)] + services.served_language_choices()
    board = Board(services)
    with gr.Row():
        lang = gr.Dropdown(choices, value=ALL, label="Language")
        refresh = gr.Button("Refresh")
        download = gr.DownloadButton("Download votes (CSV)", elem_id="download-csv")
        download_parquet = gr.DownloadButton("Download votes (Parquet)", elem_id="download-parquet")
    status = gr.Markdown(elem_id="board-status")
    plot = gr.Plot(label="Ratings", elem_id="rating-plot", visible=False)
    with gr.Row():
        wtl = gr.Dataframe(shown("wtl", None), label="CLO wins / ties / losses")
        bt = gr.Dataframe(shown("bradley_terry", None), label="Bradley–Terry (ties count half; both_bad excluded)")
    with gr.Row():
        win_rate = gr.Dataframe(shown("win_rate", None), label="Win rate (%): row beats column")
        fid = gr.Dataframe(shown("fidelity", None), label="Language fidelity of the answers")
    summary = gr.Dataframe(shown("summary", None), label="Votes (named side-by-side votes are stored but not rated)")
    timer = gr.Timer(15)

    def update(code):
        t, files = board.get(code)  # recomputed only when a vote was added
        t = dict(t)
        buttons = [gr.update(value=files["csv"]), gr.update(value=files["parquet"])]
        if not t:
            return ["*no votes yet: judge a few battles in the Arena*", gr.update(value=None, visible=False)] + \
                [shown(k, None) for k in ("wtl", "bradley_terry", "win_rate", "fidelity", "summary")] + buttons
        scope = ALL if code in (None, "", ALL) else code
        rated = t["summary"].loc[t["summary"]["language"] == scope, "rated"]
        n = int(rated.sum()) if len(rated) else 0
        text = f"**{n} rated vote{'' if n == 1 else 's'}.** " + (
            f"*{t['note']}: keep voting in the Arena.*" if t["note"]
            else "Ratings: Bradley–Terry, ties count half, 95% bootstrap intervals; `base`, when rated, is the anchor at 1000.")
        figure = rating_plot(t["bradley_terry"])
        return [text, gr.update(value=figure, visible=figure is not None), shown("wtl", t["wtl"]),
                shown("bradley_terry", t["bradley_terry"]),
                shown("win_rate", t["win_rate"]), shown("fidelity", t["fidelity"]), shown("summary", t["summary"])] + buttons

    outputs = [status, plot, wtl, bt, win_rate, fid, summary, download, download_parquet]
    for trigger in (lang.change, refresh.click, timer.tick):  # their own queue: never behind generation
        trigger(update, lang, outputs, api_visibility="private", show_progress="hidden", concurrency_id="board")

    def api(language: str = ALL) -> dict:
        """The leaderboard tables for one language ("all" for every language), as lists of records; "note" says
        why there are no ratings yet (None once there are)."""
        t = dict(board.get(language)[0])
        out = {"note": t.pop("note", None) if t else "no votes yet"}
        for k, v in t.items():
            out[k] = v.reset_index().to_dict(orient="records") if k in ("win_rate", "battles") else v.to_dict(orient="records")
        return out

    gr.api(api, api_name="leaderboard", concurrency_id="board")
    return lang, update, outputs

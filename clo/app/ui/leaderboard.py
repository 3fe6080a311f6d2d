"""Leaderboard tab: W/T/L, win-rate matrix, Bradley–Terry with intervals, language fidelity, votes to download.

Counts and win rates show from the first vote; ratings (Bradley–Terry, its chart, Elo) only once every pair that
met has enough votes, with a sentence saying how far off that is (clo.evaluate.ratings.rating_note). A variant retrained
under the same name is rated apart, as `name@hash`.

Numbers are written for a person: shares in % to 0.1, ratings and their bounds to the point, counts whole, and "—"
where there is no value yet (too few votes) or none at all (a variant against itself, the anchor's interval). Only
the page is rounded: the downloads and the `/leaderboard` API keep every digit.

Judge votes (clo.evaluate.judge, an LLM judge's verdicts stored beside the people's) never enter the people's tables: they
are shown apart, per judge, next to the people's numbers ("judge": the judge's CLO wins / ties / losses and win
rate beside the people's win rate against the same opponent), with how far each judge agrees with the people on
the answers both judged ("agreement": percent agreement and Cohen's κ, 95% bootstrap intervals), and each judge's
Bradley–Terry ratings beside the people's ("judge_ratings").

The tables are computed by clo.evaluate.board, as for `python -m clo leaderboard [--judge NAME]`; this module holds
the widgets, their handlers and the rounding.

One base model at a time ("Base model", default the one served): votes on another base are another experiment,
listed and one click away, never rated together (clo.evaluate.ratings.bases).

API: `/leaderboard` (language or "all", base key or "" for the served one) -> {"note": str or None, "bases": [{key,
label}], table name: list of records}, full precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import tempfile
import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from clo.app.context import Services
from clo.evaluate.board import COLUMNS, benchmarks_shown
from clo.evaluate.board import tables as board_tables
from clo.evaluate.ratings import COUNTS, base_key, base_label, bases
from clo.evaluate.export import export_votes

ALL = "all"
# the columns of each table as shown, so an empty table still has its real headers
RANKED = ["variant", "rating (95% CI)", "win % vs base", "votes", "on-language %"]  # short
#          enough that the five fit a phone's 400 px (docs/leaderboard-400.png)
SHOWN = {
    "standings": RANKED,
    "wtl": ["opponent", *COUNTS, "battles", "win %", "tie %", "loss %"],
    "bradley_terry": ["variant", "rating", "lower", "upper", "battles"],
    "win_rate": ["variant"],
    "summary": ["language", "stored", "named", "leaked", "rated", "a", "b", "tie", "both_bad"],
    **COLUMNS,  # fidelity, judge, agreement, judge_ratings: clo.evaluate.board's own columns
}
KAPPA = ("κ", "κ lower", "κ upper")  # written to 0.01: κ's scale is −1 to 1
# shown columns written as whole numbers: ratings and their bounds (to the point), and counts
WHOLE = {"rating", "lower", "upper", *COUNTS, "battles", "judged", "unknown", *SHOWN["summary"][1:], "people battles",
         "judge rating", "judge battles", "people rating", "plain rating", "points"}
MISSING = "—"  # a value not there yet (too few votes) or not defined (a variant against itself, the anchor's bounds)


def served_base(services: Services) -> str:
    """The key (clo.evaluate.ratings.base_key) of the base model this app serves: the board's default experiment."""
    return base_key(*services.engine.base_identity())


def base_choices(services: Services, votes: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, key) of every base model the votes are on, the served one first and marked, even before its first
    vote; the others after it, most recently voted on first."""
    found, served = bases(votes), served_base(services)
    name = services.engine.base_identity()[0]
    mine = next((b for b in found if b["key"] == served), None)
    label = mine["label"] if mine else base_label(name, served)
    return [(f"{label}: served now", served)] + [(f"{b['label']}: {b['votes']} votes", b["key"])
                                                for b in found if b["key"] != served]


def tables(services: Services, language: str | None, votes: pd.DataFrame | None = None,
           base: str | None = None) -> dict:
    """clo.evaluate.board.tables for the language chosen on the page ("all": every language) and the base model
    (default: the one served), from `votes` or the store's. A base the votes do not hold has no tables yet."""
    language = None if language in (None, "", ALL) else language
    votes = services.store.votes() if votes is None else votes
    base = base or served_base(services)
    if base not in {b["key"] for b in bases(votes)}:
        return {}
    return board_tables(votes, language, base=base)


class Board:
    """The tables and the export files (CSV, Parquet), computed again only when a vote was added (keyed on the
    store's count) and shared by every open page: a refresh without a new vote costs one COUNT query (and one of the
    benchmark rows for their table), and a download button already holds its file, so one click downloads it."""

    def __init__(self, services: Services):
        self.services, self.lock = services, threading.Lock()
        self.key, self.votes, self.cached, self.computed, self.files = None, None, {}, 0, {}
        self.bench_key, self.bench_rows, self.bench_cached = None, None, {}
        self.folder = Path(tempfile.mkdtemp(prefix="clo-votes-"))

    def get(self, language: str | None, base: str | None = None) -> tuple[dict, dict[str, str]]:
        with self.lock:
            key = self.services.store.count()
            if key != self.key:
                self.key, self.votes, self.cached = key, self.services.store.votes(), {}
                self._export(key[0])
            base = base or served_base(self.services)
            if (language, base) not in self.cached:
                self.cached[language, base] = tables(self.services, language, self.votes, base)
                self.computed += 1
            return self.cached[language, base], self.files

    def benchmarks(self, language: str | None, base: str) -> pd.DataFrame:
        """The Benchmarks table (benchmarks_shown), read again only when a benchmark row was added."""
        with self.lock:
            key = self.services.store.benchmark_count()
            if key != self.bench_key:
                self.bench_key, self.bench_rows, self.bench_cached = key, self.services.store.benchmarks(), {}
            if (language, base) not in self.bench_cached:
                self.bench_cached[language, base] = benchmarks_shown(self.bench_rows, language, base)
            return self.bench_cached[language, base]

    def choices(self) -> list[tuple[str, str]]:
        """The base-model choices (`base_choices`) of the votes as last read."""
        with self.lock:
            votes = self.votes if self.votes is not None else self.services.store.votes()
        return base_choices(self.services, votes)

    def _export(self, n: int) -> None:
        old, self.files = self.files, {fmt: str(export_votes(self.services.store, self.folder / f"votes-{n}.{fmt}",
                                                             overwrite=True))  # a folder of its own (mkdtemp)
                                       for fmt in ("csv", "parquet")}
        for path in set(old.values()) - set(self.files.values()):  # Gradio serves its own cached copy
            Path(path).unlink(missing_ok=True)


def shown(name: str, frame: pd.DataFrame | None) -> pd.DataFrame:
    """A table as the page shows it: rounded (ratings to the point, shares in % to 0.1), real headers when empty."""
    if frame is None or frame.empty:
        return pd.DataFrame(columns=SHOWN.get(name, ["variant"]))
    frame = frame.copy()
    if name == "standings":
        return ranked(frame)
    if name == "wtl":  # win, tie and loss % of the judged votes (they add up to 100); both_bad as a count
        frame = frame.drop(columns="both_bad_pct").rename(columns={f"{k}_pct": f"{k} %" for k in ("win", "tie", "loss")})
    elif name == "bradley_terry":
        frame[["rating", "lower", "upper"]] = frame[["rating", "lower", "upper"]].round(0)
    elif name == "win_rate":
        frame = (100 * frame).round(1)
        frame.columns = [f"{c} (%)" for c in frame.columns]
        frame = frame.reset_index(names="variant")
    elif name == "fidelity":
        frame["fidelity"] = (100 * frame["fidelity"]).round(1)
        frame = frame.rename(columns={"fidelity": "fidelity (%)"})
    elif name == "agreement":
        frame[list(KAPPA)] = frame[list(KAPPA)].round(2)
        return frame.round({c: 1 for c in frame.columns if c not in KAPPA})
    return frame.round(1)


def ranked(frame: pd.DataFrame) -> pd.DataFrame:
    """clo.evaluate.board.standings as a room reads it: the rating with its interval, or how many votes it still
    needs; the win rate against the base with its denominator; the votes with the both-bad ones among them."""
    def rating(r) -> str:
        if pd.notna(r["rating"]):
            return f"{r['rating']:.0f} (anchor)" if pd.isna(r["lower"]) else \
                f"{r['rating']:.0f} ({r['lower']:.0f}–{r['upper']:.0f})"
        if r["needs"]:
            return f"needs {r['needs']} more vote{'' if r['needs'] == 1 else 's'}"
        return "not rated yet: see the note above"

    def versus(r) -> str:
        return MISSING if not r["judged vs base"] else f"{r['win % vs base']:.1f} of {r['judged vs base']}"

    def votes(r) -> str:
        return f"{r['votes']}" + (f" ({r['both_bad']} both bad)" if r["both_bad"] else "")

    rows = [[r["variant"], rating(r), versus(r), votes(r), round(100 * r["fidelity"], 1) if pd.notna(r["fidelity"])
             else np.nan] for _, r in frame.iterrows()]
    return pd.DataFrame(rows, columns=RANKED)


def styled(name: str, frame: pd.DataFrame | None):
    """A table as the page writes it: `shown`'s rounded copy in a pandas Styler that prints ratings and counts
    whole, other numbers to 0.1 and a missing value as "—" (a read-only gr.Dataframe shows a Styler's text and keeps
    its numbers to sort by)."""
    table = shown(name, frame)
    if table.empty:
        return table
    whole = [c for c in table.columns if c in WHOLE]
    kappa = [c for c in table.columns if c in KAPPA]
    return table.style.format(precision=1, na_rep=MISSING).format("{:.0f}", subset=whole, na_rep=MISSING).format(
        "{:.2f}", subset=kappa, na_rep=MISSING)


def records(t: dict) -> dict:
    """The `/leaderboard` API's answer from `Board.get`'s tables: every table as a list of records, full precision;
    "note" says why there are no ratings yet (None once there are)."""
    t = dict(t)
    out = {"note": t.pop("note", None) if t else "no votes yet"}
    for k, v in t.items():
        out[k] = (v.reset_index() if k in ("win_rate", "battles") else v).to_dict(orient="records")
    return out


def status_line(t: dict, code: str | None) -> str:
    """The votes counted, in numbers that add up: every rated vote, the judged ones and the both-bad ones, and
    the leaked ones left out."""
    scope = ALL if code in (None, "", ALL) else code
    row = t["summary"][t["summary"]["language"] == scope]
    rated = int(row["rated"].sum()) if len(row) else 0
    both_bad = int(row["both_bad"].sum()) if len(row) else 0
    leaked = int(row["leaked"].sum()) if len(row) else 0
    text = f"**{rated} vote{'' if rated == 1 else 's'}**"
    text += f": {rated - both_bad} judged, {both_bad} both bad." if both_bad else "."
    if leaked:  # clo.evaluate.leaks: stored, never rated
        text += (f" {leaked} more left out: an answer named a variant or the prompt asked who the model is, so the "
                 f"vote{' was' if leaked == 1 else 's were'} not blind.")
    return text


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
    names = [f"{v} {r:.0f}" + (" (anchor)" if np.isnan(lo) else f" [{lo:.0f}, {hi:.0f}]")
             for v, r, lo, hi in zip(order["variant"], order["rating"], order["lower"], order["upper"])]
    ax.barh(names, order["rating"] - 1000, left=1000, xerr=[below, above], capsize=4, color="#6366f1")
    ax.axvline(1000, color="grey", lw=0.8)
    ax.xaxis.set_major_formatter("{x:.0f}")
    ax.set_xlabel("Bradley–Terry rating (95% bootstrap interval)")
    fig.tight_layout()
    return fig



@dataclass(frozen=True)
class BoardTab:
    """What build_app wires from the Leaderboard tab (refreshed on load and when the tab opens)."""

    lang: object  # the language filter
    inputs: object  # what `update` reads: the language and the base model chosen
    update: object  # the handler that refreshes every table
    outputs: object  # the components it fills

def build(services: Services):
    choices = [("All languages", ALL)] + services.served_language_choices()
    board = Board(services)
    with gr.Row():
        base = gr.Dropdown(board.choices(), value=served_base(services), label="Base model (one experiment each)",
                           elem_id="board-base", scale=2)
        lang = gr.Dropdown(choices, value=ALL, label="Language", scale=1)
        refresh = gr.Button("Refresh", scale=0, min_width=100)
    status = gr.Markdown(elem_id="board-status")

    def table(name: str, label: str, **kw) -> gr.Dataframe:  # written by `styled`: only a read-only table shows text
        return gr.Dataframe(shown(name, None), label=label, interactive=False, wrap=True, **kw)

    # the first screen: one ranked table and one plot; everything else below, one click away
    standings = table("standings", "Ranking (people's blind votes; both bad counts as a vote, never as a win)",
                      elem_id="board-ranking", column_widths=["20%", "26%", "19%", "19%", "16%"])
    plot = gr.Plot(label="Ratings", elem_id="rating-plot", visible=False)
    with gr.Row():
        download = gr.DownloadButton("Download votes (CSV)", elem_id="download-csv", size="sm")
        download_parquet = gr.DownloadButton("Download votes (Parquet)", elem_id="download-parquet", size="sm")
    with gr.Accordion("CLO against each opponent: wins, ties, losses", open=False):
        wtl = table("wtl", "win, tie and loss % of the judged votes (both bad aside)")
    with gr.Accordion("Who beats whom: the win-rate matrix and the ratings' detail", open=False):
        win_rate = table("win_rate", "Win rate (%): row beats column")
        bt = table("bradley_terry", "Bradley–Terry (ties count half; both bad left out)")
    with gr.Accordion("Language fidelity of the answers", open=False):
        fid = table("fidelity", "share of each variant's answers in the prompt's language; echoes and loops apart")
    with gr.Accordion("Votes per language", open=False):
        summary = table("summary", "stored: every vote; named: side-by-side votes, stored but not rated; rated: the "
                        "blind ones, by outcome")
    with gr.Accordion("Ratings with style held equal: length, markdown, language", open=False):
        style = table("style", "Bradley–Terry with the answers' length, markdown and language as covariates (95% "
                      "intervals), beside the plain rating: what is left when style is not rewarded")
        style_coefficients = table("style_coefficients", "What each style difference is worth, in rating points (95% "
                                   "intervals): language = an answer in the prompt's language against one that is not; "
                                   "length and markdown per standard deviation")
    with gr.Accordion("Benchmarks (lm-evaluation-harness): accuracy per variant, the same items for each", open=False):
        benchmarks = gr.Dataframe(pd.DataFrame(columns=["task", "language", "variant", "accuracy", "n", "chance", "note"]),
                                  label="accuracy (%) ± its standard error; run under Train → Benchmarks or with "
                                  "`python -m clo evaluate`", interactive=False, wrap=True, elem_id="board-benchmarks")
    with gr.Accordion("LLM judge beside the people", open=False):
        judge = table("judge", "CLO's wins / ties / losses by each judge (judge votes are never counted above)")
        agree = table("agreement", "Judge vs people on the battles both judged: agreement and Cohen's κ (95% intervals); "
                      "first shown %: how often the judge named the answer it saw first (about 50% is no position bias); "
                      "orders agree %: how often both orders of a pair named the same winner (a disagreement is a tie)")
        judge_bt = table("judge_ratings", "Bradley–Terry from each judge's verdicts beside the people's rating (— : too "
                         "few verdicts per pair to rate yet)")
    timer = gr.Timer(15)

    def bench(code, key):
        return board.benchmarks(None if code in (None, "", ALL) else code, key or served_base(services))

    def update(code, key=None):
        t, files = board.get(code, key)  # recomputed only when a vote was added
        t = dict(t)
        listed = board.choices()
        picker = gr.update(choices=listed, value=key if key in {k for _, k in listed} else served_base(services))
        buttons = [gr.update(value=files["csv"]), gr.update(value=files["parquet"])]
        if not t:
            return ["*no votes on this base model yet: judge a few battles in the Arena*", styled("standings", None),
                    gr.update(value=None, visible=False)] + \
                [styled(k, None) for k in ("wtl", "bradley_terry", "win_rate", "fidelity", "summary")] + buttons + \
                [styled(k, None) for k in ("judge", "agreement", "judge_ratings", "style", "style_coefficients")] + \
                [picker, bench(code, key)]
        text = status_line(t, code) + (
            f" *{t['note']}: keep voting in the Arena.*" if t["note"]
            else " Ratings: Bradley–Terry, ties count half, 95% bootstrap intervals; `base`, when rated, is the anchor at 1000.")
        if judge_line := services.judging.public_line():
            text += f"\n\n{judge_line}"
        figure = rating_plot(t["bradley_terry"])
        return [text, styled("standings", t["standings"]), gr.update(value=figure, visible=figure is not None)] + \
            [styled(k, t[k]) for k in ("wtl", "bradley_terry", "win_rate", "fidelity", "summary")] + buttons + \
            [styled(k, t[k]) for k in ("judge", "agreement", "judge_ratings", "style", "style_coefficients")] + \
            [picker, bench(code, key)]

    outputs = [status, standings, plot, wtl, bt, win_rate, fid, summary, download, download_parquet, judge, agree,
               judge_bt, style, style_coefficients, base, benchmarks]
    for trigger in (lang.change, base.change, refresh.click, timer.tick):  # their own queue: never behind generation
        trigger(update, [lang, base], outputs, api_visibility="private", show_progress="hidden", concurrency_id="board")

    def api(language: str = ALL, base: str = "") -> dict:
        """The leaderboard tables for one language ("all" for every language) and one base model (its key, as in
        "bases"; default: the one served), as lists of records, and "bases": every base model the votes are on;
        "note" says why there are no ratings yet (None once there are). Full precision: the page rounds, the API
        does not."""
        out = records(board.get(language, base or None)[0])
        out["benchmarks"] = bench(language, base or None).to_dict(orient="records")
        out["bases"] = [{"key": k, "label": label} for label, k in board.choices()]
        return out

    gr.api(api, api_name="leaderboard", concurrency_id="board")
    return BoardTab(lang=lang, inputs=[lang, base], update=update, outputs=outputs)

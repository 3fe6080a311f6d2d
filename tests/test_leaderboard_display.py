"""The Leaderboard tab writes numbers for a person (shares to 0.1 %, ratings whole, "—" for no value), while the
downloads and the `/leaderboard` API keep every digit. Tables go through the tab's own update handler and the
gr.Dataframe / gr.Plot components it fills, as the page gets them."""

import math
import re
import types

import gradio as gr
import pandas as pd
import pytest

from clo.evaluate.board import leaderboard
from clo.app.ui.leaderboard import ALL, MISSING, Board, build, rating_plot, records, styled
from clo.evaluate.store import open_store
from conftest import SERVED_BASE, fake_engine

ANSWERS = {"clo-ko": "서울에는 경복궁이 있습니다", "base": "Seoul has many places", "sft-ko": "남산타워에 가 보세요"}
# (variant, opponent, outcome for the variant): clo-ko vs base 2 wins, 4 losses, 1 both_bad -> win 33.3 %, loss 66.7 %
# over 6 judged, both_bad 14.3 % of 7; clo-ko vs sft-ko 3 / 2 ties / 1; sft-ko vs base 3 / 1 tie / 2. Every pair has
# at least 5 judged votes, so the Bradley–Terry ratings (and the anchor's missing interval) are shown.
GAMES = ([("clo-ko", "base", "win")] * 2 + [("clo-ko", "base", "loss")] * 4
         + [("clo-ko", "base", "both_bad")]
         + [("clo-ko", "sft-ko", "win")] * 3 + [("clo-ko", "sft-ko", "tie")] * 2 + [("clo-ko", "sft-ko", "loss")]
         + [("sft-ko", "base", "win")] * 3 + [("sft-ko", "base", "tie")] + [("sft-ko", "base", "loss")] * 2)
TABLES = ("standings", None, "wtl", "bradley_terry", "win_rate", "fidelity", "summary")  # the update's outputs, after
#          its status line (None: the plot)
# a number as the page may write it: whole, or one decimal; nothing else numeric is allowed
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
SHOWN_NUMBER = re.compile(r"^-?\d+(\.\d)?$")


@pytest.fixture
def services(tmp_path):
    store = open_store(str(tmp_path / "votes.db"), seed=0)
    for n, (me, other, result) in enumerate(GAMES):
        voter = f"v{n}"
        b = store.create_battle(voter=voter, language="ko", prompt="서울에서 뭘 볼까?",
                                answers={me: ANSWERS[me], other: ANSWERS[other]}, base=SERVED_BASE)
        left = b.answer_a == ANSWERS[me]
        outcome = {"win": "a" if left else "b", "loss": "b" if left else "a"}.get(result, result)
        store.vote(b.id, outcome, voter=voter)
    from clo.app.access import Access
    from clo.evaluate.judge.background import Judging

    yield types.SimpleNamespace(store=store, engine=fake_engine(), served_language_choices=lambda: [("Korean", "ko")],
                                judging=Judging(store, Access(False)))
    store.close()


@pytest.fixture
def page(services):
    """What the tab's update handler sends for "all languages", each table as its gr.Dataframe serialises it."""
    with gr.Blocks():
        tab = build(services)
    update, outputs = tab.update, tab.outputs
    sent = update(ALL)
    return {name: outputs[1 + i].postprocess(sent[1 + i]) for i, name in enumerate(TABLES) if name} | {"plot": sent[2]}


def cells(data) -> list[list[str]]:
    """The text of every cell the page shows (a Styler's display text, else the values as the browser writes them)."""
    if data.metadata:
        return data.metadata["display_value"]
    return [[str(v) for v in row] for row in data.data]


def cell(data, row_name: str, column: str) -> str:
    rows = cells(data)
    return next(r for r in rows if r[0] == row_name)[data.headers.index(column)]


def test_every_shown_number_has_at_most_one_decimal_and_no_nan(page):
    for name in filter(None, TABLES):
        data = page[name]
        assert data.data and data.metadata, name  # shown as a Styler's text
        for row in cells(data):
            for text in row:
                assert "nan" not in text.lower() and "none" not in text.lower(), (name, row)
                if NUMBER.match(text):
                    assert SHOWN_NUMBER.match(text), (name, text)
        for row in data.data:  # the numbers behind the text (what the table sorts and copies) are rounded too
            for value in row:
                if isinstance(value, float) and not math.isnan(value):
                    assert value == round(value, 1), (name, value)


def test_known_rates_ratings_and_missing_values_as_shown(page):
    wtl, bt, win = page["wtl"], page["bradley_terry"], page["win_rate"]
    assert cell(wtl, "base", "win %") == "33.3" and cell(wtl, "base", "loss %") == "66.7"
    assert cell(wtl, "base", "both_bad") == "1" and cell(wtl, "base", "wins") == "2"  # a count: one denominator for %
    assert cell(wtl, "sft-ko", "tie %") == "33.3"
    assert cell(win, "clo-ko", "base (%)") == "33.3" and cell(win, "base", "clo-ko (%)") == "66.7"
    assert cell(win, "clo-ko", "clo-ko (%)") == MISSING  # a variant against itself
    for variant in ("base", "clo-ko", "sft-ko"):
        for column in ("rating", "lower", "upper"):
            text = cell(bt, variant, column)
            assert re.fullmatch(r"\d+", text) or (variant == "base" and column != "rating" and text == MISSING), text
        assert re.fullmatch(r"\d+", cell(bt, variant, "battles"))
    assert cell(bt, "base", "rating") == "1000" and cell(bt, "base", "lower") == MISSING
    assert all(re.fullmatch(r"\d+", text) for row in cells(page["summary"]) for text in row[1:])


def test_missing_fidelity_reads_as_a_dash_and_an_empty_table_keeps_its_headers():
    fid = pd.DataFrame({"variant": ["clo-ko", "base"], "fidelity": [2 / 3, float("nan")],
                        "judged": [3, 0], "unknown": [0, 4], "echo": [1, 0], "loop": [0, 2]})
    data = gr.Dataframe(interactive=False).postprocess(styled("fidelity", fid))
    assert data.headers == ["variant", "fidelity (%)", "judged", "unknown", "echo", "loop"]
    assert data.metadata["display_value"] == [["clo-ko", "66.7", "3", "0", "1", "0"], ["base", MISSING, "0", "4", "0", "2"]]
    for name in filter(None, TABLES):
        empty = gr.Dataframe(interactive=False).postprocess(styled(name, None))
        assert empty.headers and empty.data == []


def test_the_ranking_reads_at_a_glance(page):
    """The first table: ratings with their interval (the anchor said), the win rate against the base with its
    denominator, the votes with the both-bad ones among them: clo-ko met base 7 times (1 both bad) and sft-ko 6."""
    ranking = page["standings"]
    assert ranking.headers == ["variant", "rating (95% CI)", "win % vs base", "votes", "on-language %"]
    assert cell(ranking, "base", "rating (95% CI)") == "1000 (anchor)"
    assert re.fullmatch(r"\d+ \(\d+–\d+\)", cell(ranking, "clo-ko", "rating (95% CI)"))
    assert cell(ranking, "clo-ko", "win % vs base") == "33.3 of 6" and cell(ranking, "base", "win % vs base") == MISSING
    assert cell(ranking, "clo-ko", "votes") == "13 (1 both bad)" and cell(ranking, "sft-ko", "votes") == "12"
    ratings = [int(cell(ranking, v, "rating (95% CI)").split()[0]) for v in [r[0] for r in cells(ranking)]]
    assert ratings == sorted(ratings, reverse=True)  # ranked


def test_a_variant_short_of_votes_says_how_many_more(services):
    from clo.app.ui.leaderboard import ranked
    from clo.evaluate.board import standings

    few = leaderboard(services.store.votes().head(4))  # clo-ko vs base: 2 wins, 2 losses; nobody else met
    few["fidelity"] = pd.DataFrame(columns=["variant", "fidelity"])
    shown = ranked(standings(few)).set_index("variant")
    assert shown.loc["clo-ko", "rating (95% CI)"] == "needs 1 more vote"
    assert shown.loc["clo-ko", "win % vs base"] == "50.0 of 4" and shown.loc["base", "votes"] == "4"


def test_chart_labels_are_whole_points(page, services):
    assert isinstance(page["plot"], dict) and page["plot"]["visible"]
    t, _ = Board(services).get(ALL)
    fig = rating_plot(t["bradley_terry"])
    fig.canvas.draw()
    ax = fig.axes[0]
    names = [label.get_text() for label in ax.get_yticklabels()]
    assert "base 1000 (anchor)" in names
    assert all(re.fullmatch(r"\S+ \d+( \(anchor\)| \[\d+, \d+\])", n) for n in names), names
    assert all(re.fullmatch(r"\d+", label.get_text()) for label in ax.get_xticklabels()), ax.get_xticklabels()


def test_api_and_downloads_keep_full_precision(services):
    t, files = Board(services).get(ALL)
    api = records(t)  # what `/leaderboard` returns
    base = next(r for r in api["wtl"] if r["opponent"] == "base")
    assert abs(base["win_pct"] - 100 / 3) < 1e-12 and abs(base["both_bad_pct"] - 100 / 7) < 1e-12
    clo = next(r for r in api["win_rate"] if r["variant"] == "clo-ko")
    assert abs(clo["base"] - 1 / 3) < 1e-12
    ratings = [r["rating"] for r in api["bradley_terry"] if r["variant"] != "base"]
    assert ratings and all(r != round(r) for r in ratings)  # not rounded to the point
    # the downloads hold every vote as stored, and tally to the same unrounded numbers
    for fmt, read in (("csv", pd.read_csv), ("parquet", pd.read_parquet)):
        votes = read(files[fmt])
        assert len(votes) == len(GAMES), fmt
        again = leaderboard(votes)["wtl"].set_index("opponent")
        assert abs(again.loc["base", "win_pct"] - 100 / 3) < 1e-12, fmt

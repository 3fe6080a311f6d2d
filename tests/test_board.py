"""The command line and the Leaderboard tab give the same numbers: both take their tables from clo.evaluate.board.

One vote store holds the people's votes and a judge's verdicts on the same answers (and a few votes in another
language, which `--lang ko` leaves out). `python -m clo leaderboard [--judge NAME]` runs in-process through the real
parser (so with its real defaults) and returns the tables it prints; the `/leaderboard` API is the function the tab
registers with Gradio, called in-process. Every number must agree to the last digit.

    python -m pytest -q tests/test_board.py
"""

import math
import random
import types

import gradio as gr
import pytest

from clo.app.ui.leaderboard import build
from clo.evaluate.store import open_store
from conftest import SERVED_BASE, fake_engine

JUDGE = "scripted-judge"
PAIRS = (("clo-ko", "base"), ("clo-ko", "sft-ko"), ("sft-ko", "base"))
STRENGTH = {"clo-ko": 1.0, "sft-ko": 0.3, "base": -0.5}  # who tends to win, for the people and the judge alike


def winner(rng: random.Random, first: str, second: str) -> str:
    """An outcome for `first` shown on the left: "a", "b" or "tie", drawn from the two strengths."""
    x = rng.random()
    p = 1 / (1 + math.exp(STRENGTH[second] - STRENGTH[first]))
    return "tie" if x < 0.15 else "a" if x < 0.15 + 0.85 * p else "b"


@pytest.fixture
def store(tmp_path):
    from clo.evaluate.judgments import Judgment

    rng = random.Random(0)
    store = open_store(str(tmp_path / "votes.db"), seed=0)
    n = 0
    for language, per_pair in (("ko", 8), ("zh", 2)):
        for first, second in PAIRS:
            for k in range(per_pair):
                prompt = f"질문 {language} {first} {second} {k}"
                answers = {first: f"{first} 답 {k}", second: f"{second} 답 {k}"}
                voter = f"v{n}"
                n += 1
                b = store.create_battle(voter=voter, language=language, prompt=prompt, answers=answers,
                                        base=SERVED_BASE)
                left, right = (first, second) if b.answer_a == answers[first] else (second, first)
                store.vote(b.id, "both_bad" if k == 7 else winner(rng, left, right), voter=voter)
                if k % 4 != 3:  # the judge judges most of the people's pairs, in an order of its own
                    shown = (first, second) if rng.random() < 0.5 else (second, first)
                    outcome = winner(rng, *shown)  # asked both ways: a tie is the two orders disagreeing
                    both = (outcome, outcome) if outcome != "tie" else ("a", "b")
                    store.record_judgment(Judgment(
                        judge=JUDGE, protocol="clo-pairwise-3", language=language, prompt=prompt,
                        variant_a=shown[0], variant_b=shown[1], answer_a=answers[shown[0]],
                        answer_b=answers[shown[1]], outcome=outcome, reply="A", orders=2, first=both[0],
                        second=both[1], reply_second="B" if both[1] == "a" else "A", base_model=SERVED_BASE[0]))
    yield store
    store.close()


def cli(store, *options: str) -> dict:
    """What `python -m clo leaderboard --db STORE --lang ko OPTIONS` prints its numbers from (the handler's return)."""
    from clo.__main__ import build_parser

    args = build_parser().parse_args(["leaderboard", "--db", store.where, "--lang", "ko", *options])
    return args.func(args)


def api(store) -> dict:
    """What `/leaderboard` answers for "ko": the function the Leaderboard tab registers under that name."""
    services = types.SimpleNamespace(store=store, engine=fake_engine(), served_language_choices=lambda: [("Korean", "ko")],
                                     judging=types.SimpleNamespace(public_line=lambda: ""))
    with gr.Blocks() as demo:
        build(services)
    leaderboard = next(f.fn for f in demo.fns.values() if f.api_name == "leaderboard")
    return leaderboard("ko")


def same(x, y) -> bool:
    """Equal to the last digit; two missing values (None / NaN) are the same."""
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in (x, y)]
    return all(missing) if any(missing) else x == y


def assert_rows(got: list[dict], want: list[dict], what: str) -> None:
    assert len(got) == len(want) and got, what
    for g, w in zip(got, want):
        assert set(g) == set(w), what
        bad = {k: (g[k], w[k]) for k in g if not same(g[k], w[k])}
        assert not bad, f"{what}: {bad}"


def test_cli_and_api_give_the_same_numbers(store, capsys):
    board = api(store)
    people = cli(store)  # the people's tables
    judge = cli(store, "--judge", JUDGE)  # the judge's tables, its agreement and its position bias
    printed = capsys.readouterr().out

    # the people's tables, record for record
    assert people["note"] is None and board["note"] is None  # enough votes: ratings are given on both
    for name in ("summary", "wtl", "bradley_terry", "elo", "counts"):
        assert_rows(board[name], people[name].to_dict(orient="records"), name)
    for name in ("win_rate", "battles"):
        assert_rows(board[name], people[name].reset_index().to_dict(orient="records"), name)

    # the judge's W/T/L and win rate beside the people's
    mine = [r for r in board["judge"] if r["judge"] == JUDGE]
    assert_rows([{k: r[k] for k in ("opponent", "wins", "ties", "losses", "judge win %", "people win %")} for r in mine],
                [{"opponent": j.opponent, "wins": j.wins, "ties": j.ties, "losses": j.losses,
                  "judge win %": j.win_pct + 0.5 * j.tie_pct,
                  "people win %": p.win_pct + 0.5 * p.tie_pct}
                 for j, p in zip(judge["wtl"].itertuples(), people["wtl"].itertuples())], "judge")
    assert [j.opponent for j in judge["wtl"].itertuples()] == [p.opponent for p in people["wtl"].itertuples()]

    # its agreement with the people and its position bias
    a, row = judge["agreement"], next(r for r in board["agreement"] if r["judge"] == JUDGE)
    assert a["n"] > 0 and 0 < a["kappa"] < 1
    assert_rows([row], [{"judge": JUDGE, "battles": a["n"], "agreement %": 100 * a["agreement"],
                         "lower %": 100 * a["agreement_lower"], "upper %": 100 * a["agreement_upper"],
                         "κ": a["kappa"], "κ lower": a["kappa_lower"], "κ upper": a["kappa_upper"],
                         "first shown %": 100 * judge["first_shown"],
                         "orders agree %": 100 * judge["position_consistency"], "follows the order": "no"}], "agreement")
    both = [(r.judge_first, r.judge_second) for r in store.votes().itertuples() if r.judge == JUDGE and r.language == "ko"]
    assert judge["position_consistency"] == pytest.approx(sum(f == s for f, s in both) / len(both))
    assert judge["position_consistency"] > 0.5
    assert (f"{row['battles']} battles: {row['agreement %']:.1f}% agree [95% CI {row['lower %']:.1f}, "
            f"{row['upper %']:.1f}], Cohen's κ {row['κ']:.2f} [{row['κ lower']:.2f}, {row['κ upper']:.2f}]") in printed
    assert f"{row['first shown %']:.1f}% of its choices named the answer shown first" in printed
    assert f"the two orders of a pair agreed on {row['orders agree %']:.1f}% of {len(both)} pairs" in printed

    # its Bradley–Terry ratings, with the same bootstrap intervals, beside the people's
    assert judge["note"] is None
    people_rating = dict(zip(people["bradley_terry"]["variant"], people["bradley_terry"]["rating"]))
    assert_rows([r for r in board["judge_ratings"] if r["judge"] == JUDGE],
                [{"judge": JUDGE, "variant": r.variant, "judge rating": r.rating, "lower": r.lower, "upper": r.upper,
                  "judge battles": r.battles, "people rating": people_rating[r.variant]}
                 for r in judge["bradley_terry"].itertuples()], "judge_ratings")


def test_a_verdict_asked_in_one_order_is_labelled_and_kept_apart(store):
    """Verdicts stored before judges were asked both ways stay readable, under "<judge> (single order)": never
    mixed with the same judge's two-order verdicts, and the table says they were not asked both ways."""
    from clo.evaluate.judgments import Judgment
    from clo.evaluate.ratings import SINGLE_ORDER, judges

    before = store.votes()
    old = [Judgment(judge=JUDGE, protocol="clo-pairwise-2", language="ko", prompt=f"옛 질문 {k}", variant_a="clo-ko",
                    variant_b="sft-ko", answer_a=f"a {k}", answer_b=f"b {k}", outcome="a", reply="A",
                    base_model=SERVED_BASE[0]) for k in range(3)]
    assert all(store.record_judgment(j) for j in old)
    votes = store.votes()
    assert judges(votes) == [JUDGE, JUDGE + SINGLE_ORDER]
    board = api(store)
    rows = {r["judge"]: r for r in board["agreement"]}
    assert rows[JUDGE + SINGLE_ORDER]["follows the order"] == "not asked both ways"
    assert rows[JUDGE]["follows the order"] == "no"
    # the two-order judge's tables are what they were before the old verdicts came in
    from clo.evaluate.board import judge_board

    assert judge_board(votes, JUDGE, "ko", n_bootstrap=0)["wtl"].equals(
        judge_board(before, JUDGE, "ko", n_bootstrap=0)["wtl"])
    assert judge_board(votes, JUDGE + SINGLE_ORDER, "ko", n_bootstrap=0)["first_shown"] == 1.0


def test_the_first_table_ranks_every_variant_with_counts_that_add_up(store):
    """The Leaderboard's one ranked table: each count recomputed here from the raw votes (people's, blind, Korean):
    votes it was in, both_bad among them, its win rate against the base over the judged ones; ranked by rating."""
    from clo.evaluate.board import tables

    votes = store.votes()
    people = votes[votes["judge"].isna() & (votes["language"] == "ko")] if "judge" in votes else votes[votes["language"] == "ko"]
    t = tables(votes, "ko", base=SERVED_BASE[0])
    table = t["standings"].set_index("variant")
    assert list(t["standings"]["variant"]) == list(t["bradley_terry"].sort_values("rating", ascending=False)["variant"])
    for v in ("base", "sft-ko", "clo-ko"):
        mine = people[(people["variant_a"] == v) | (people["variant_b"] == v)]
        assert table.loc[v, "votes"] == len(mine) and table.loc[v, "both_bad"] == (mine["outcome"] == "both_bad").sum()
        assert table.loc[v, "needs"] == 0 and not math.isnan(table.loc[v, "rating"])
        if v == "base":
            assert math.isnan(table.loc[v, "win % vs base"]) and table.loc[v, "judged vs base"] == 0
            continue
        vs = mine[((mine["variant_a"] == "base") | (mine["variant_b"] == "base")) & (mine["outcome"] != "both_bad")]
        won = ((vs["variant_a"] == v) & (vs["outcome"] == "a")) | ((vs["variant_b"] == v) & (vs["outcome"] == "b"))
        assert table.loc[v, "judged vs base"] == len(vs)
        assert table.loc[v, "win % vs base"] == pytest.approx(100 * (won.sum() + 0.5 * (vs["outcome"] == "tie").sum()) / len(vs))
    # Chinese has 2 judged votes per pair: no ratings yet, each variant needs 5 - 2 more for each of its 2 pairs
    zh = tables(votes, "zh", base=SERVED_BASE[0])
    assert zh["note"] and set(zh["standings"]["needs"]) == {6} and zh["standings"]["rating"].isna().all()


def test_leaderboard_json_is_the_printed_numbers_in_one_object(store, capsys):
    """`leaderboard --json`: per base and language, CLO against each opponent (the W/T/L the tables print, n the
    judged votes, the win rate (wins + ½ ties) / n inside its interval, no length-controlled number from 8 pairs but
    the reason) and the ratings; with --judge, its position consistency as judge_board computes it."""
    import json

    people, judge = cli(store), cli(store, "--judge", JUDGE)
    capsys.readouterr()
    cli(store, "--json")
    out = json.loads(capsys.readouterr().out)
    assert out["rater"] == "people" and [b["key"] for b in out["bases"]] == [SERVED_BASE[0]]
    ko = out["bases"][0]["languages"]["ko"]
    assert list(ko) == ["opponents", "note", "ratings"] and list(out["bases"][0]["languages"]) == ["ko"]
    for row in people["wtl"].itertuples():
        mine = ko["opponents"][row.opponent]
        assert (mine["wins"], mine["ties"], mine["losses"], mine["both_bad"]) == (row.wins, row.ties, row.losses, row.both_bad)
        assert mine["n"] == row.wins + row.ties + row.losses
        assert mine["win_rate"] == pytest.approx((row.wins + 0.5 * row.ties) / mine["n"])
        assert mine["lower"] <= mine["win_rate"] <= mine["upper"]
        assert mine["length_controlled"] is None and "it needs 20" in mine["length_control_note"]
    assert [r["variant"] for r in ko["ratings"]] == list(people["bradley_terry"]["variant"])
    assert [r["rating"] for r in ko["ratings"]] == pytest.approx(list(people["bradley_terry"]["rating"]))
    cli(store, "--json", "--judge", JUDGE)
    theirs = json.loads(capsys.readouterr().out)["bases"][0]["languages"]["ko"]
    assert theirs["position_consistency"] == pytest.approx(judge["position_consistency"])
    assert theirs["both_orders"] == judge["both_orders"] and theirs["first_shown"] == pytest.approx(judge["first_shown"])


def test_the_ratings_with_style_held_equal_sit_beside_the_plain_ones(store):
    """The people's and the judge's style-controlled ratings, with intervals, next to each one's plain rating, and
    what each style difference is worth (the language one is not fitted here: the answers' detected languages are
    all Korean, so it does not vary)."""
    from clo.evaluate.board import tables

    t = tables(store.votes(), "ko", base=SERVED_BASE[0])
    style = t["style"]
    assert set(style["rater"]) == {"people", JUDGE} and len(style) == 6
    people = style[style["rater"] == "people"].set_index("variant")
    plain = t["bradley_terry"].set_index("variant")["rating"]
    assert people["plain rating"].to_dict() == pytest.approx(plain.to_dict())
    assert people.loc["base", "rating"] == 1000 and (people["lower"].dropna() <= people["rating"].drop("base")).all()
    coefficients = t["style_coefficients"]
    assert set(coefficients["feature"]) <= {"length", "markdown", "language"} and (coefficients["lower"] <= coefficients["upper"]).all()

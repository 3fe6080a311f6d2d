"""clo.evaluate.ratings on a literal table worked out by hand; Bradley–Terry and Elo on battles from known strengths."""

import math

import numpy as np
import pandas as pd
import pytest

from clo.evaluate.board import leaderboard
from clo.evaluate.ratings import (
    MIN_PAIR_BATTLES,
    bradley_terry,
    count_matrix,
    elo_ratings,
    fit_bradley_terry,
    pair_counts,
    rating_note,
    version_keys,
    vote_summary,
    win_rate_matrix,
    wtl_table,
)

POINTS = 400 / math.log(10)  # rating points per unit of θ (log-odds)

# (variant_a, variant_b, outcome, language, blind); the comment says what it means for CLO. Rows numbered from 1.
BATTLES = pd.DataFrame(
    [
        ("clo-ko", "base", "a", "ko", True),  # CLO on the left, wins
        ("base", "clo-ko", "b", "ko", True),  # CLO on the right, wins
        ("base", "clo-ko", "a", "ko", True),  # CLO on the right, loses
        ("clo-ko", "base", "tie", "ko", True),  # tie
        ("clo-ko", "base", "both_bad", "ko", True),  # both bad: reported, not a tie
        ("sft-ko", "clo-ko", "b", "ko", True),  # CLO wins against SFT
        ("clo-ko", "sft-ko", "tie", "ko", True),  # tie with SFT
        ("sft-ko", "base", "a", "ko", True),  # no CLO: SFT beats base
        ("clo-zh", "base", "b", "zh", True),  # Chinese: CLO loses
        ("clo-ko", "base", "b", "ko", False),  # named vote: stored, never rated
    ],
    columns=["variant_a", "variant_b", "outcome", "language", "blind"],
)


def row(table: pd.DataFrame, **where) -> pd.Series:
    mask = np.logical_and.reduce([table[k] == v for k, v in where.items()])
    assert mask.sum() == 1, where
    return table[mask].iloc[0]


def simulate(theta: dict[str, float], n: int, seed: int, both_bad: float = 0.0, language: str = "ko") -> pd.DataFrame:
    """n battles between random pairs on random sides, decided by P(a wins) = σ(θ_a − θ_b); a share `both_bad`
    of them is then marked both_bad at random."""
    rng = np.random.default_rng(seed)
    names = np.array(list(theta))
    strength = np.array(list(theta.values()))
    a = rng.integers(0, len(names), n)
    b = (a + rng.integers(1, len(names), n)) % len(names)
    a_wins = rng.random(n) < 1 / (1 + np.exp(-(strength[a] - strength[b])))
    outcome = np.where(rng.random(n) < both_bad, "both_bad", np.where(a_wins, "a", "b"))
    return pd.DataFrame({"variant_a": names[a], "variant_b": names[b], "outcome": outcome, "language": language})


# ---- hand-computed tables ----

def test_wtl_orients_the_focus_variant_whichever_side_it_was_on():
    table = wtl_table(BATTLES, focus="clo")
    assert list(table["opponent"]) == ["base", "sft-ko"]
    base = row(table, opponent="base")  # clo-ko: rows 1-5; clo-zh: row 9; the named row 10 is left out
    assert (base["wins"], base["ties"], base["losses"], base["both_bad"], base["battles"]) == (2, 1, 2, 1, 6)
    assert (base["win_pct"], base["tie_pct"], base["loss_pct"]) == pytest.approx((40.0, 20.0, 40.0))
    assert base["both_bad_pct"] == pytest.approx(100 / 6)
    sft = row(table, opponent="sft-ko")
    assert (sft["wins"], sft["ties"], sft["losses"], sft["both_bad"]) == (1, 1, 0, 0)
    assert (sft["win_pct"], sft["tie_pct"], sft["loss_pct"]) == pytest.approx((50.0, 50.0, 0.0))


def test_wtl_focus_by_exact_name_and_per_language():
    ko = row(wtl_table(BATTLES, focus="clo", language="ko"), opponent="base")
    assert (ko["wins"], ko["ties"], ko["losses"], ko["both_bad"]) == (2, 1, 1, 1)
    assert (ko["win_pct"], ko["tie_pct"], ko["loss_pct"], ko["both_bad_pct"]) == pytest.approx((50, 25, 25, 20))
    zh = wtl_table(BATTLES, focus="clo-zh")
    assert list(zh["opponent"]) == ["base"] and (zh["wins"][0], zh["losses"][0]) == (0, 1)
    sft = wtl_table(BATTLES, focus="sft")  # sft-ko: beat base once, against CLO one loss and one tie
    assert row(sft, opponent="base")["wins"] == 1
    assert tuple(row(sft, opponent="clo-ko")[["wins", "ties", "losses"]]) == (0, 1, 1)
    assert wtl_table(BATTLES, focus="orpo").empty


def test_win_rate_counts_ties_half_and_leaves_both_bad_out():
    rates, battles = win_rate_matrix(BATTLES, language="ko"), count_matrix(BATTLES, language="ko")
    # clo-ko vs base: 2 wins, 1 tie, 1 loss (+1 both_bad, left out) → (2 + ½) / 4
    assert rates.loc["clo-ko", "base"] == pytest.approx(0.625)
    assert rates.loc["base", "clo-ko"] == pytest.approx(0.375)
    assert rates.loc["clo-ko", "sft-ko"] == pytest.approx(0.75)  # 1 win, 1 tie
    assert rates.loc["sft-ko", "base"] == 1.0 and rates.loc["base", "sft-ko"] == 0.0
    assert np.isnan(rates.loc["base", "base"])
    assert battles.loc["clo-ko", "base"] == battles.loc["base", "clo-ko"] == 4
    assert battles.loc["clo-ko", "sft-ko"] == 2 and battles.loc["sft-ko", "base"] == 1
    everywhere = win_rate_matrix(BATTLES)
    assert everywhere.loc["base", "clo-zh"] == 1.0 and np.isnan(everywhere.loc["clo-zh", "sft-ko"])


def test_pair_counts_mirror_each_other():
    counts = pair_counts(BATTLES)
    clo, base = row(counts, variant="clo-ko", opponent="base"), row(counts, variant="base", opponent="clo-ko")
    assert tuple(clo[["wins", "ties", "losses", "both_bad", "battles"]]) == (2, 1, 1, 1, 5)
    assert tuple(base[["wins", "ties", "losses", "both_bad", "battles"]]) == (1, 1, 2, 1, 5)


def test_named_votes_are_stored_but_not_rated():
    summary = vote_summary(BATTLES)
    assert list(summary["language"]) == ["ko", "zh", "all"]
    assert tuple(row(summary, language="ko")[["stored", "named", "rated", "a", "b", "tie", "both_bad"]]) == (
        9, 1, 8, 3, 2, 2, 1)
    assert tuple(row(summary, language="all")[["stored", "named", "rated"]]) == (10, 1, 9)
    assert list(vote_summary(BATTLES, language="zh")["language"]) == ["zh"]
    # without the blind column every vote counts: the named loss of row 10 appears
    unblinded = BATTLES.drop(columns="blind")
    assert row(wtl_table(unblinded), opponent="base")["losses"] == 3
    assert row(wtl_table(BATTLES), opponent="base")["losses"] == 2
    assert win_rate_matrix(unblinded, language="ko").loc["clo-ko", "base"] == pytest.approx(2.5 / 5)
    # clo-ko's judged blind battles: 4 against base (the both_bad and the named one left out), 2 against SFT
    assert row(elo_ratings(BATTLES), variant="clo-ko")["battles"] == 6
    assert row(bradley_terry(BATTLES, n_bootstrap=0), variant="clo-ko")["battles"] == 6


def test_language_filter():
    tables = leaderboard(BATTLES, language="zh", n_bootstrap=20, min_battles=1)
    assert set(tables) == {"note", "summary", "wtl", "win_rate", "battles", "counts", "bradley_terry", "elo"}
    assert set(tables["bradley_terry"]["variant"]) == {"clo-zh", "base"}
    assert list(tables["win_rate"].index) == ["base", "clo-zh"]  # ordered by rating: base won the one battle
    assert row(tables["wtl"], opponent="base")["losses"] == 1
    ko = leaderboard(BATTLES, language="ko", n_bootstrap=0, min_battles=1)
    assert set(ko["elo"]["variant"]) == {"clo-ko", "base", "sft-ko"}
    assert leaderboard(BATTLES, language="zh")["note"].startswith("not enough votes to rate yet (n = 1)")
    assert leaderboard(BATTLES, language="sw", n_bootstrap=20)["bradley_terry"].empty


# ---- bad and empty input ----

def test_unknown_outcome_names_the_value():
    bad = BATTLES.assign(outcome=["a", "draw", *BATTLES["outcome"][2:]])
    with pytest.raises(ValueError, match="unknown outcome 'draw' in row 1;"):
        leaderboard(bad)


@pytest.mark.parametrize("column", ["variant_a", "outcome", "language"])
def test_missing_column_is_named(column):
    with pytest.raises(ValueError, match=f"lack column.*{column}"):
        wtl_table(BATTLES.drop(columns=column))


def test_self_battle_is_refused():
    with pytest.raises(ValueError, match="'base' against itself"):
        win_rate_matrix(pd.concat([BATTLES, BATTLES.iloc[:1].assign(variant_a="base")]))


@pytest.mark.parametrize("empty", [pd.DataFrame(), BATTLES.iloc[:0]])
def test_empty_input_gives_empty_tables(empty):
    tables = leaderboard(empty)
    for name in ("wtl", "win_rate", "battles", "counts", "bradley_terry", "elo"):
        assert tables[name].empty, name
    assert {"lower", "upper"} <= set(tables["bradley_terry"].columns)
    assert tuple(tables["summary"].iloc[0][["language", "stored", "rated"]]) == ("all", 0, 0)


# ---- Bradley–Terry and Elo against known strengths ----

TRUTH = {"base": 0.0, "sft-ko": 0.5, "clo-ko": 1.2}


def test_bradley_terry_recovers_known_strengths():
    battles = simulate(TRUTH, 3000, seed=0, both_bad=0.1)
    bt = bradley_terry(battles, seed=0)
    assert list(bt["variant"]) == ["clo-ko", "sft-ko", "base"]
    assert bt["battles"].sum() == 2 * (battles["outcome"] != "both_bad").sum()
    rating = dict(zip(bt["variant"], bt["rating"]))
    assert rating["base"] == 1000.0  # the default anchor
    for name, theta in TRUTH.items():
        assert rating[name] - 1000 == pytest.approx(POINTS * theta, abs=40)  # ≈ 3.5 standard errors
        lower, upper = row(bt, variant=name)[["lower", "upper"]]
        if name == "base":  # the anchor is fixed, not measured: no interval rather than a zero-width one
            assert np.isnan(lower) and np.isnan(upper)
            continue
        assert lower <= POINTS * theta + 1000 <= upper
        assert lower <= rating[name] <= upper


def test_bootstrap_interval_shrinks_with_more_data():
    def widths(n):
        bt = bradley_terry(simulate(TRUTH, n, seed=1), seed=1, n_bootstrap=300)
        return (bt["upper"] - bt["lower"])[bt["variant"] != "base"].to_numpy()

    small, large = widths(1500), widths(6000)
    assert (large < 0.7 * small).all()  # ~ 1/√4 = 0.5 in theory


def test_ties_count_half_and_both_bad_counts_nothing():
    def rating_of_x(outcomes: list[str]) -> float:  # x always on the left, y anchored at 1000
        battles = pd.DataFrame({"variant_a": "x", "variant_b": "y", "outcome": outcomes * 100, "language": "ko"})
        bt = bradley_terry(battles, anchor="y", n_bootstrap=20)
        return float(bt.set_index("variant")["rating"]["x"])

    assert rating_of_x(["tie"]) == pytest.approx(1000, abs=1e-3)
    assert rating_of_x(["tie", "tie"]) == pytest.approx(rating_of_x(["a", "b"]), abs=1e-3)
    three_to_one = rating_of_x(["a", "a", "a", "b"])
    assert three_to_one == pytest.approx(1000 + POINTS * math.log(3), abs=0.5)  # 3:1 odds (the prior: < 0.5 points at 400 votes)
    assert rating_of_x(["a", "a", "tie", "tie"]) == pytest.approx(three_to_one, abs=1e-3)  # 2 + ½ + ½ : ½ + ½
    assert rating_of_x(["a", "a", "a", "b", "both_bad", "both_bad"]) == pytest.approx(three_to_one, abs=1e-3)


def test_anchor_and_its_errors():
    battles = simulate(TRUTH, 600, seed=2)
    bt = bradley_terry(battles, anchor="clo-ko", anchor_rating=1200, n_bootstrap=50)
    assert row(bt, variant="clo-ko")["rating"] == 1200 and (bt["rating"] <= 1200 + 1e-9).all()
    centred = bradley_terry(battles.replace({"base": "llama"}), n_bootstrap=0)  # no "base": mean 1000
    assert centred["rating"].mean() == pytest.approx(1000)
    with pytest.raises(ValueError, match="anchor 'gpt' has no judged battles"):
        bradley_terry(battles, anchor="gpt")


def test_batched_fit_equals_separate_fits():
    i, j = np.array([0, 0, 1]), np.array([1, 2, 2])
    wins = np.array([[30.0, 55.5, 40.0], [20.0, 60.0, 45.5], [35.0, 50.0, 30.0]])
    totals = np.array([60.0, 80.0, 70.0])
    together = fit_bradley_terry(i, j, wins, totals, 3)
    for b in range(3):
        alone = fit_bradley_terry(i, j, wins[b], totals, 3)
        assert together[b] - together[b, 0] == pytest.approx(alone - alone[0], abs=1e-6)


def test_elo_ranks_a_clearly_better_variant_first():
    battles = simulate({"base": 0.0, "sft-ko": 0.2, "clo-ko": 1.5}, 2000, seed=3)
    elo = elo_ratings(battles)
    assert elo["variant"][0] == "clo-ko"
    assert elo["rating"].mean() == pytest.approx(1000)  # zero-sum updates
    assert elo["battles"].sum() == 2 * len(battles)


# ---- little data: the first votes of an audience ----

def one_way(n: int, winner: str = "clo-ko", loser: str = "base") -> pd.DataFrame:
    """n votes, all for `winner`, shown on alternating sides."""
    rows = [(winner, loser, "a") if k % 2 == 0 else (loser, winner, "b") for k in range(n)]
    return pd.DataFrame(rows, columns=["variant_a", "variant_b", "outcome"]).assign(language="ko")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_few_one_way_votes_say_not_enough_instead_of_rating(n):
    tables = leaderboard(one_way(n))
    assert tables["note"].startswith(f"not enough votes to rate yet (n = {n})")
    assert tables["bradley_terry"].empty and tables["elo"].empty
    assert {"rating", "lower", "upper"} <= set(tables["bradley_terry"].columns)
    assert tuple(row(tables["wtl"], opponent="base")[["wins", "ties", "losses"]]) == (n, 0, 0)  # counts are shown
    assert tables["win_rate"].loc["clo-ko", "base"] == 1.0


def test_one_way_votes_at_the_minimum_give_a_modest_rating_and_an_interval_that_holds_it():
    bt = bradley_terry(one_way(MIN_PAIR_BATTLES), n_bootstrap=500).set_index("variant")
    rating, lower, upper = bt.loc["clo-ko", ["rating", "lower", "upper"]]
    assert 1000 < rating < 1000 + POINTS * math.log(MIN_PAIR_BATTLES * 20)  # finite, under 100:1 odds
    assert lower <= rating <= upper and upper - lower > 200  # five votes: a wide interval, never zero-width
    assert lower < 1000 + POINTS * math.log(2)  # five straight wins do not prove better than 2:1 odds
    assert leaderboard(one_way(MIN_PAIR_BATTLES))["note"] is None


def test_intervals_widen_when_votes_are_few():
    def width(n):
        battles = pd.concat([one_way(3 * n), one_way(n, winner="base", loser="clo-ko")])
        bt = bradley_terry(battles, n_bootstrap=500).set_index("variant")
        rating, lower, upper = bt.loc["clo-ko", ["rating", "lower", "upper"]]
        assert lower <= rating <= upper
        return upper - lower

    assert width(2) > 1.8 * width(20) > 0


def test_all_ties_rate_equal_with_an_interval_around_it():
    battles = pd.DataFrame({"variant_a": ["clo-ko", "base"] * 4, "variant_b": ["base", "clo-ko"] * 4,
                            "outcome": "tie", "language": "ko"})
    assert leaderboard(battles.iloc[:3])["note"].startswith("not enough votes to rate yet (n = 3)")
    tables = leaderboard(battles)
    bt = tables["bradley_terry"].set_index("variant")
    assert tables["note"] is None
    assert bt.loc["clo-ko", "rating"] == pytest.approx(1000, abs=1e-6)
    assert bt.loc["clo-ko", "lower"] < 1000 < bt.loc["clo-ko", "upper"]


def test_a_pair_never_compared_is_rated_through_the_others_and_shows_no_win_rate():
    battles = pd.concat([one_way(6, "sft-ko", "base"), one_way(6, "clo-ko", "sft-ko")])
    tables = leaderboard(battles)
    assert tables["note"] is None
    assert list(tables["bradley_terry"]["variant"]) == ["clo-ko", "sft-ko", "base"]  # transitive through SFT
    assert np.isnan(tables["win_rate"].loc["clo-ko", "base"]) and tables["battles"].loc["clo-ko", "base"] == 0


def test_groups_that_never_met_have_no_common_scale():
    battles = pd.concat([one_way(6, "sft-ko", "base"), one_way(6, "clo-ko", "dpo-ko")])
    tables = leaderboard(battles)
    assert tables["note"].startswith("no common scale yet (n = 12)") and "base, sft-ko" in tables["note"]
    assert tables["bradley_terry"].empty


def test_rating_note_counts_only_judged_votes():
    battles = pd.concat([one_way(4), one_way(6).assign(outcome="both_bad")])
    assert rating_note(pair_counts(battles)).startswith("not enough votes to rate yet (n = 4)")


# ---- (name, hash): a retrained adapter's votes stay apart ----

def test_votes_on_a_retrained_adapter_are_rated_apart():
    old = one_way(6).assign(hash_a=lambda f: np.where(f.variant_a == "clo-ko", "1a2b3c4d", None),
                            hash_b=lambda f: np.where(f.variant_b == "clo-ko", "1a2b3c4d", None))
    new = one_way(6, winner="base", loser="clo-ko").assign(
        hash_a=lambda f: np.where(f.variant_a == "clo-ko", "9f8e7d6c", None),
        hash_b=lambda f: np.where(f.variant_b == "clo-ko", "9f8e7d6c", None))
    tables = leaderboard(pd.concat([old, new], ignore_index=True))
    wtl = tables["wtl"]
    assert tables["note"] is None
    assert set(tables["bradley_terry"]["variant"]) == {"base", "clo-ko@1a2b3c", "clo-ko@9f8e7d"}
    assert tuple(row(tables["counts"], variant="clo-ko@1a2b3c", opponent="base")[["wins", "losses"]]) == (6, 0)
    assert tuple(row(tables["counts"], variant="clo-ko@9f8e7d", opponent="base")[["wins", "losses"]]) == (0, 6)
    assert wtl["wins"].sum() == 6 and wtl["losses"].sum() == 6  # the focus "clo" still gathers both versions
    assert tables["note"] is None or "never met" not in tables["note"]


def test_one_hash_per_name_keeps_plain_names():
    battles = one_way(3).assign(hash_a=lambda f: np.where(f.variant_a == "clo-ko", "abc", None),
                                hash_b=lambda f: np.where(f.variant_b == "clo-ko", "abc", None))
    assert set(version_keys(battles)["variant_a"]) == {"clo-ko", "base"}


# ---- a judge's numbers and its agreement with people (clo.evaluate.judge) ----

from clo import CLOError  # noqa: E402
from clo.evaluate.agreement import (  # noqa: E402
    agreement,
    agreement_interval,
    cohen_kappa,
    length_control,
    length_controlled_win_rate,
    win_rate_interval,
    winner_labels,
)
from clo.evaluate.ratings import HUMAN, judges  # noqa: E402


def test_win_rate_counts_ties_half_like_alpaca_eval():
    # 5 wins, 1 tie, 2 losses: (5 + ½) / 8 = 0.6875; alpaca_eval 0.6.6's get_winrate gives 68.75 on the same
    # preferences [2, 2, 2, 1, 1.5, 2, 1, 2] (checked in a throwaway venv: the package is not a dependency)
    r = win_rate_interval([1, 1, 1, 0, 0.5, 1, 0, 1], n_bootstrap=2000)
    assert r["rate"] == 0.6875 and (r["wins"], r["ties"], r["losses"], r["n"]) == (5, 1, 2, 8)
    assert r["lower"] < r["rate"] < r["upper"]
    # two items, one won: the resampled rate is 0, ½ or 1 with probability ¼, ½, ¼, so the 95% interval is [0, 1]
    two = win_rate_interval([1, 0], n_bootstrap=4000)
    assert (two["rate"], two["lower"], two["upper"]) == (0.5, 0.0, 1.0)
    # every item won: no spread to resample
    assert tuple(win_rate_interval([1] * 9).values())[:3] == (1.0, 1.0, 1.0)
    # the interval narrows as items grow
    few, many = win_rate_interval([1, 0] * 10), win_rate_interval([1, 0] * 500)
    assert many["upper"] - many["lower"] < (few["upper"] - few["lower"]) / 4
    assert math.isnan(win_rate_interval([])["rate"])
    with pytest.raises(CLOError, match="score is 1 \\(win\\), 0.5 \\(tie\\) or 0 \\(loss\\), got 0.7"):
        win_rate_interval([1, 0.7])


def test_length_controlled_win_rate_by_hand():
    # 30 items where the first answer is longer (Δ = +5): 24 won; 10 where it is shorter (Δ = −5): 5 won.
    # tanh(Δ/sd) takes two values ±t, so the fit is saturated: σ(β0 + β1·t) = 0.8, σ(β0 − β1·t) = 0.5, and
    # β0 = (logit 0.8 + logit 0.5) / 2 = ln 2, LC = σ(ln 2) = 2/3, below the plain 29/40 = 72.5%: the longer
    # answers won more, and the length-controlled rate discounts that
    scores = [1] * 24 + [0] * 6 + [1] * 5 + [0] * 5
    first, second = [10] * 30 + [5] * 10, [5] * 30 + [10] * 10
    assert win_rate_interval(scores)["rate"] == 29 / 40
    assert length_controlled_win_rate(scores, first, second) == pytest.approx(2 / 3, abs=1e-6)
    # a tie is a preference of ½ in the same fit: the shorter side's 5 wins + 5 losses as 10 ties give the same fit
    assert length_controlled_win_rate([1] * 24 + [0] * 6 + [0.5] * 10, first, second) == pytest.approx(2 / 3, abs=1e-6)
    # no length difference: the intercept alone, LC = the plain win rate
    assert length_controlled_win_rate([1, 0, 0.5, 1], [7] * 4, [7] * 4) == 0.625
    # one side won everything: 1 whatever the lengths
    assert length_controlled_win_rate([1, 1, 1], [1, 50, 9], [30, 2, 9]) == 1.0
    # the same outcomes with the lengths swapped: the fit is mirrored, LC unchanged
    assert length_controlled_win_rate(scores, second, first) == pytest.approx(2 / 3, abs=1e-6)
    with pytest.raises(CLOError, match="3 scores but 2 length differences"):
        length_controlled_win_rate([1, 0, 1], [1, 2], [3, 4])


def test_length_control_says_when_it_cannot_tell():
    """Too few pairs, or a fit separated by length (its coefficient at the bound), give no number but a reason;
    otherwise the number is the fit's, as above."""
    five = [1, 1, 1, 0.5, 0]  # plain 70%: the length order alone splits them, and the unpenalised fit runs to its bound
    lengths = ([50, 40, 30, 20, 10], [10, 10, 10, 10, 10])
    bare = length_controlled_win_rate(five, *lengths)  # what the bare fit says: an artefact at an extreme
    assert bare < 0.001 or bare > 0.999
    lc, why = length_control(five, *lengths)
    assert math.isnan(lc) and why == "length control not identifiable here: 5 pairs, it needs 20"
    separated = [1] * 15 + [0] * 15  # 30 pairs: every longer first answer won, every shorter one lost
    lc, why = length_control(separated, [20] * 15 + [5] * 15, [5] * 15 + [20] * 15)
    assert math.isnan(lc) and "length alone separates wins from losses" in why
    scores = [1] * 24 + [0] * 6 + [1] * 5 + [0] * 5  # the by-hand case above: 40 pairs, not separated
    first, second = [10] * 30 + [5] * 10, [5] * 30 + [10] * 10
    assert length_control(scores, first, second) == (pytest.approx(2 / 3, abs=1e-6), None)


def test_kappa_perfect_chance_opposite_and_by_hand():
    assert cohen_kappa("abcabc", "abcabc") == 1.0  # perfect
    assert cohen_kappa("aabb", "abab") == 0.0  # p_o = ½ = p_e: no better than chance
    assert cohen_kappa("abab", "baba") == -1.0  # always opposite, equal shares
    # 50 items: both yes 20, yes/no 5, no/yes 10, both no 15: p_o = 0.7, p_e = 0.5·0.6 + 0.5·0.4 = 0.5, κ = 0.4
    one = ["yes"] * 25 + ["no"] * 25
    two = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(one, two) == pytest.approx(0.4)
    # three labels: p_o = 4/6; shares (clo, tie, sft) = (3, 1, 2)/6 and (3, 2, 1)/6, so p_e = (9 + 2 + 2)/36 = 13/36
    # and κ = (24/36 − 13/36) / (23/36) = 11/23
    assert cohen_kappa(["clo", "clo", "clo", "tie", "sft", "sft"], ["clo", "clo", "tie", "tie", "sft", "clo"]) == \
        pytest.approx(11 / 23)
    assert math.isnan(cohen_kappa("aaa", "aaa"))  # one label for everything: κ undefined
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(CLOError, match="same items: got 2 and 3"):
        cohen_kappa("ab", "abc")


def test_agreement_interval():
    perfect = agreement_interval("abcab" * 4, "abcab" * 4, n_bootstrap=500)
    assert (perfect["n"], perfect["agreement"], perfect["agreement_lower"], perfect["kappa"]) == (20, 1.0, 1.0, 1.0)
    assert perfect["kappa_lower"] == perfect["kappa_upper"] == 1.0
    one = ["yes"] * 25 + ["no"] * 25
    two = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    r = agreement_interval(one, two, n_bootstrap=2000)
    assert r["agreement"] == 0.7 and r["kappa"] == pytest.approx(0.4)
    assert r["agreement_lower"] < 0.7 < r["agreement_upper"] and r["kappa_lower"] < 0.4 < r["kappa_upper"]
    assert r == agreement_interval(one, two, n_bootstrap=2000)  # seeded
    assert agreement_interval([], [])["n"] == 0


def mixed_votes() -> pd.DataFrame:
    """People's votes and a judge's on the same answers (pair_key), plus a judge-only pair."""
    rows = [
        # pair_key, variant_a, variant_b, outcome, judge
        ("p1", "clo-ko", "sft-ko", "a", None),  # people: clo
        ("p1", "sft-ko", "clo-ko", "b", None),  # people: clo (other side)
        ("p1", "sft-ko", "clo-ko", "b", "J"),  # judge: clo
        ("p2", "clo-ko", "sft-ko", "b", None),  # people: sft
        ("p2", "clo-ko", "sft-ko", "a", "J"),  # judge: clo (disagrees)
        ("p3", "clo-ko", "sft-ko", "both_bad", None),  # both bad: no judge can say it, left out
        ("p3", "clo-ko", "sft-ko", "a", "J"),
        ("p4", "sft-ko", "clo-ko", "tie", None),  # people: tie
        ("p4", "sft-ko", "clo-ko", "a", "J"),  # judge: sft
        ("p5", "clo-ko", "sft-ko", "a", "J"),  # only the judge
        ("p6", "sft-ko", "clo-ko", "a", None),  # only people
    ]
    frame = pd.DataFrame(rows, columns=["pair_key", "variant_a", "variant_b", "outcome", "judge"])
    return frame.assign(language="ko", blind=True)


def test_judge_votes_are_kept_apart_from_the_human_tally():
    votes = mixed_votes()
    assert judges(votes) == ["J"] and judges(BATTLES) == []
    people = leaderboard(votes, language="ko", n_bootstrap=0)
    assert row(people["summary"], language="ko")[["stored", "rated", "a", "b", "tie", "both_bad"]].tolist() == \
        [6, 6, 2, 2, 1, 1]
    assert row(people["wtl"], opponent="sft-ko")[["wins", "ties", "losses", "both_bad"]].tolist() == [2, 1, 2, 1]
    judge = leaderboard(votes, language="ko", rater="J", n_bootstrap=0)
    assert row(judge["summary"], language="ko")["stored"] == 5
    assert row(judge["wtl"], opponent="sft-ko")[["wins", "ties", "losses"]].tolist() == [4, 0, 1]
    assert leaderboard(votes, rater=HUMAN, n_bootstrap=0)["summary"].equals(leaderboard(votes, n_bootstrap=0)["summary"])
    assert list(winner_labels(votes.iloc[:3])) == ["clo-ko", "clo-ko", "clo-ko"]


def test_agreement_pairs_people_and_judge_on_the_same_answers():
    r = agreement(mixed_votes(), "J", n_bootstrap=200)
    # items: p1 ×2 (clo/clo, clo/clo), p2 (sft/clo), p4 (tie/sft); p3 both_bad, p5 and p6 unpaired are left out
    assert r["n"] == 4 and r["agreement"] == 0.5
    # people (clo, clo, sft, tie) vs judge (clo, clo, clo, sft): p_o = ½, p_e = ½·¾ + ¼·¼ + ¼·0 = 7/16, κ = 1/9
    assert r["kappa"] == pytest.approx((0.5 - 7 / 16) / (1 - 7 / 16))
    assert agreement(mixed_votes(), "nobody")["n"] == 0
    assert agreement(BATTLES, "J")["n"] == 0  # votes without pair keys: nothing to pair


# ---- style-controlled Bradley–Terry (clo.evaluate.style) ----

def synthetic_style_battles(n: int = 1500, seed: int = 0, gamma_language: float = 1.0, gamma_length: float = 0.4):
    """Battles among four variants whose true strengths and style effects are set here: `sft` is the strongest but
    answers in the prompt's language only 30% of the time; `clo` is weaker but always on-language; a longer answer
    is preferred too. Returns (battles, on_a, on_b, true θ)."""
    import random

    theta = {"base": 0.0, "sft": 0.9, "clo": 0.6, "old": -0.5}
    on_rate = {"base": 0.3, "sft": 0.3, "clo": 1.0, "old": 0.5}
    rng = random.Random(seed)
    rows, on_a, on_b, raw = [], [], [], []
    for k in range(n):
        a, b = rng.sample(sorted(theta), 2)
        la, lb = rng.randint(20, 400), rng.randint(20, 400)
        oa, ob = rng.random() < on_rate[a], rng.random() < on_rate[b]
        rows.append({"variant_a": a, "variant_b": b, "answer_a": "x" * la, "answer_b": "y" * lb})
        on_a.append(oa), on_b.append(ob), raw.append((la - lb) / (la + lb))
    raw = np.array(raw)
    length = (raw - raw.mean()) / raw.std()
    for r, oa, ob, ln in zip(rows, on_a, on_b, length):
        z = theta[r["variant_a"]] - theta[r["variant_b"]] + gamma_language * (oa - ob) + gamma_length * ln
        x = rng.random()
        r["outcome"] = "tie" if x < 0.08 else ("a" if rng.random() < 1 / (1 + math.exp(-z)) else "b")
        r["language"] = "ko"
    return pd.DataFrame(rows), np.array(on_a), np.array(on_b), theta


def test_style_controlled_ratings_equal_an_independent_logistic_regression():
    """With no prior, our fit is the maximum-likelihood logistic regression of the same design: scikit-learn's
    (no penalty, no intercept, each battle twice with a tie as one win and one loss, as FastChat fits it) gives the
    same strength differences and style coefficients."""
    sklearn = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is not installed (requirements-dev.txt)")
    from clo.evaluate.style import fit, style_features

    battles, on_a, on_b, _ = synthetic_style_battles(600)
    raw = style_features(battles["answer_a"], battles["answer_b"], on_a, on_b)
    x = raw.copy()
    for c in ("length", "markdown"):
        if x[c].std(ddof=0) > 0:
            x[c] = (x[c] - x[c].mean()) / x[c].std(ddof=0)
    x = x[["length", "language"]].to_numpy()  # no markdown in these answers: not varying, left out
    names = sorted(set(battles["variant_a"]) | set(battles["variant_b"]))
    index = {n: k for k, n in enumerate(names)}
    i, j = battles["variant_a"].map(index).to_numpy(), battles["variant_b"].map(index).to_numpy()
    y = battles["outcome"].map({"a": 1.0, "tie": 0.5, "b": 0.0}).to_numpy()
    theta, gamma = fit(i, j, y, x, len(names), prior_sd=None)

    design = np.zeros((len(y), len(names)))
    design[np.arange(len(y)), i], design[np.arange(len(y)), j] = 1.0, -1.0
    design = np.hstack([design, x])
    twice, target = np.vstack([design, design]), np.concatenate([(y >= 0.5), (y == 1.0)]).astype(float)
    lr = sklearn.LogisticRegression(penalty=None, fit_intercept=False, max_iter=10_000, tol=1e-10).fit(twice, target)
    theirs = lr.coef_[0]
    assert theta - theta[0] == pytest.approx(theirs[: len(names)] - theirs[0], abs=2e-4)
    assert gamma == pytest.approx(theirs[len(names):], abs=2e-4)


def test_style_control_recovers_the_true_strengths_and_the_worth_of_the_language():
    """On votes where the strongest variant (sft) often answers off-language, the plain ratings put the always
    on-language clo first; with the style held equal the true order comes back, and the language coefficient's
    interval holds the true 1.0 log-odds (434 points)."""
    from clo.evaluate.board import leaderboard
    from clo.evaluate.style import POINTS, style_bradley_terry

    battles, on_a, on_b, theta = synthetic_style_battles(1500)
    plain = leaderboard(battles.assign(blind=True), "ko")["bradley_terry"]
    styled = style_bradley_terry(battles, on_a, on_b, n_bootstrap=100)
    truth = sorted(theta, key=theta.get, reverse=True)
    assert list(styled["ratings"]["variant"]) == truth
    assert list(plain["variant"]) != truth and plain.iloc[0]["variant"] == "clo"
    lang = styled["coefficients"].set_index("feature").loc["language"]
    assert lang["lower"] <= POINTS * 1.0 <= lang["upper"] and lang["used"]
    assert not styled["coefficients"].set_index("feature").loc["markdown", "used"]  # no markdown: left out
    r = styled["ratings"].set_index("variant")
    assert r.loc["base", "rating"] == 1000 and math.isnan(r.loc["base", "lower"])
    assert (r["lower"].dropna() <= r["rating"].drop("base")).all()

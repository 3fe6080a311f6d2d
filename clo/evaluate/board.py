"""The Leaderboard's tables, computed in one place for the command line (`python -m clo leaderboard [--judge NAME]`)
and the app's Leaderboard tab (clo.app.ui.leaderboard, whose `/leaderboard` API returns them as records).

Every function takes the votes as `VoteStore.votes()` gives them (people's and judges' rows together; the battles
DataFrame of clo.evaluate.ratings) and `base`, the base model whose votes it rates (clo.evaluate.ratings.bases: one
experiment per base; ratings never mix them), and returns plain DataFrames and dicts at full precision: rounding for a
person is the page's business, and the command line prints what it is given.

    leaderboard(votes, language, rater=HUMAN)   one rater's tables: vote counts, W/T/L, win-rate matrix, Bradley–Terry
                                                 with intervals and Elo, or the sentence saying why there are no ratings
    judge_board(votes, judge, language)          a judge's tables (`leaderboard` with rater=judge), its agreement with
                                                 the people and its position bias: `leaderboard --judge NAME`
    tables(votes, language)                      everything the tab shows: the people's tables, the answers' language
                                                 fidelity per variant, the first screen's one ranked table
                                                 ("standings"), and per judge its W/T/L beside the people's win
                                                 rate ("judge"), agreement and position bias ("agreement") and its
                                                 Bradley–Terry beside the people's ("judge_ratings")

    >>> from clo.evaluate.board import judge_board, tables
    >>> tables(store.votes(), language="ko")["wtl"]
    >>> judge_board(store.votes(), "Qwen/Qwen2.5-72B-Instruct", language="ko")["agreement"]   # {"n", "kappa", ...}

Both callers use the same resample count (N_BOOTSTRAP, the command line's --bootstrap default) and seed, so the
command line and the tab give the same intervals for the same votes.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

from clo.evaluate.agreement import agreement
from clo.evaluate.judge.run import CONSISTENCY_FLOOR, first_shown_share, position_consistency
from clo.evaluate.langid import VERSION as LANGID_VERSION, code_fidelity, detect, known
from clo.evaluate.ratings import (
    HUMAN,
    MIN_PAIR_BATTLES,
    bradley_terry_of_counts,
    elo_ratings,
    judged_of_counts,
    is_focus,
    judges,
    of_base,
    pair_counts,
    rated_battles,
    rater_votes,
    rating_note,
    version_keys,
    vote_summary,
    win_rates_of_counts,
    wtl_of_counts,
)

N_BOOTSTRAP = 1000  # bootstrap resamples behind every interval (Bradley–Terry, agreement, κ)
# the columns of the tables this module builds (the `/leaderboard` API's record keys)
COLUMNS = {
    "fidelity": ["variant", "fidelity", "judged", "unknown", "echo", "loop"],
    "judge": ["judge", "opponent", "wins", "ties", "losses", "judge win %", "people win %", "people battles"],
    "agreement": ["judge", "battles", "agreement %", "lower %", "upper %", "κ", "κ lower", "κ upper", "first shown %",
                  "orders agree %", "follows the order"],
    "judge_ratings": ["judge", "variant", "judge rating", "lower", "upper", "judge battles", "people rating"],
    "standings": ["variant", "rating", "lower", "upper", "needs", "win % vs base", "judged vs base", "votes",
                  "both_bad", "fidelity"],
    "style": ["rater", "variant", "rating", "lower", "upper", "plain rating", "battles"],
    "style_coefficients": ["rater", "feature", "points", "lower", "upper"],
}
STYLE_BOOTSTRAP = 100  # resamples behind the style-controlled intervals (each a fit of its own)


def leaderboard(
    battles: pd.DataFrame,
    language: str | None = None,
    focus: str = "clo",
    anchor: str | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    min_battles: int = MIN_PAIR_BATTLES,
    rater: str = HUMAN,
    base: str | None = None,
) -> dict[str, pd.DataFrame | str | None]:
    """Every ratings table for one language (None = all) from `rater`'s votes (HUMAN: the people's; or a judge's
    name) on one base model (`base`, clo.evaluate.ratings.of_base; None: the votes must all be on one), the votes
    checked and aggregated once (clo.evaluate.ratings.pair_counts).

    summary        vote_summary: stored / named / rated votes and outcomes per language
    wtl            wtl_table for `focus`
    win_rate       win_rate_matrix, rows and columns ordered by Bradley–Terry rating
    battles        count_matrix (judged battles behind each win rate), same order
    counts         pair_counts: wins / ties / losses / both_bad per (variant, opponent); the only table,
                   with summary, that shows a variant whose battles were all both_bad
    bradley_terry  rating with lower / upper bootstrap bounds; empty while `note` says why ratings are not given
    elo            online Elo, K = 4; empty likewise
    note           None, or the sentence saying why there are no ratings yet (`rating_note`)
    """
    battles = of_base(battles, base)
    counts = pair_counts(battles, language, rater)  # checks the battles and aggregates the rated ones once
    note = rating_note(counts, min_battles)
    bt = bradley_terry_of_counts(counts.iloc[:0] if note else counts, anchor, 1000.0, n_bootstrap, 0.95, seed)
    elo = elo_ratings(battles, language, rater=rater)
    order = list(bt["variant"]) or sorted(set(counts["variant"]))
    return {
        "note": note,
        "summary": vote_summary(battles, language, rater),
        "wtl": wtl_of_counts(counts, focus),
        "win_rate": win_rates_of_counts(counts).reindex(index=order, columns=order),
        "battles": judged_of_counts(counts).reindex(index=order, columns=order),
        "counts": counts,
        "bradley_terry": bt,
        "elo": elo.iloc[:0] if note else elo,
    }


def standings(out: dict, min_battles: int = MIN_PAIR_BATTLES, reference: str = "base") -> pd.DataFrame:
    """The Leaderboard's first table, one row per variant, from `leaderboard`'s tables (+ "fidelity" from `tables`):

    rating, lower, upper  Bradley–Terry with its 95% interval (NaN until ratings are given)
    needs                 judged votes still missing before ratings can be given: for each pair this variant is in
                          that met, what it lacks of `min_battles` (a variant that met no one: `min_battles`); 0 once
                          ratings are given
    win % vs base         its wins + half its ties over its judged votes against `reference` (the base model), and
    judged vs base        those judged votes (both_bad aside, as in every win rate here)
    votes, both_bad       every rated vote it was in, and how many of them were "both are bad"
    fidelity              share of its answers in the prompt's language (`answer_fidelity`)

    Ranked by rating, then (before ratings) by win % vs base."""
    counts, bt = out["counts"], out["bradley_terry"]
    fidelity = out.get("fidelity", pd.DataFrame(columns=COLUMNS["fidelity"])).set_index("variant")["fidelity"]
    names = sorted(set(counts["variant"]) | set(fidelity.index))
    judged = counts["wins"] + counts["ties"] + counts["losses"]
    is_ref = (counts["opponent"] == reference) | counts["opponent"].str.startswith(f"{reference}@")
    rows = []
    for v in names:
        mine = counts["variant"] == v
        met = judged[mine & (judged > 0)]
        vs = counts[mine & is_ref]
        n_ref = int((vs["wins"] + vs["ties"] + vs["losses"]).sum())
        rated = bt[bt["variant"] == v]
        rows.append({"variant": v, "rating": rated["rating"].iloc[0] if len(rated) else np.nan,
                     "lower": rated["lower"].iloc[0] if len(rated) else np.nan,
                     "upper": rated["upper"].iloc[0] if len(rated) else np.nan,
                     "needs": 0 if len(bt) else (int((min_battles - met).clip(lower=0).sum()) if len(met) else min_battles),
                     "win % vs base": 100 * (vs["wins"].sum() + 0.5 * vs["ties"].sum()) / n_ref if n_ref else np.nan,
                     "judged vs base": n_ref, "votes": int(counts.loc[mine, "battles"].sum()),
                     "both_bad": int(counts.loc[mine, "both_bad"].sum()), "fidelity": fidelity.get(v, np.nan)})
    table = pd.DataFrame(rows, columns=COLUMNS["standings"])
    return table.sort_values(["rating", "win % vs base", "variant"], ascending=[False, False, True],
                             na_position="last").reset_index(drop=True)


def focus_results(battles: pd.DataFrame, focus: str = "clo", rater: str = HUMAN, n_bootstrap: int = N_BOOTSTRAP,
                  seed: int = 0) -> dict:
    """What `python -m clo leaderboard --json` prints for one base model's votes (`base` already chosen) by one rater:
    per language, `focus`'s result against each opponent from the rated votes (blind, this rater's) — wins, ties,
    losses, both_bad, n (the judged votes: both_bad aside), win_rate with its bootstrap interval (wins + ½ ties over
    n, clo.evaluate.agreement.win_rate_interval), length_controlled or, when it cannot be told, null with
    length_control_note (clo.evaluate.agreement.length_control) — and the language's ratings (or the note saying
    why there are none); for a judge, its position consistency and its share of first-shown choices. NaN is null."""
    from clo.evaluate.agreement import length_control, side_scores, win_rate_interval

    def number(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    out = {}
    for language in sorted(set(battles["language"])):
        rated = rated_battles(battles, language, rater)
        mine = rated[is_focus(rated["variant_a"], focus) != is_focus(rated["variant_b"], focus)]
        focus_a = is_focus(mine["variant_a"], focus)
        opponent = mine["variant_b"].where(focus_a, mine["variant_a"])
        opponents = {}
        for name in sorted(set(opponent)):
            rows = mine[opponent == name]
            judged = rows[rows["outcome"] != "both_bad"]
            scores, length_mine, length_theirs = side_scores(judged, is_focus(judged["variant_a"], focus))
            rate = win_rate_interval(scores, n_bootstrap, seed=seed)
            lc, why = length_control(scores, length_mine, length_theirs)
            opponents[name] = {"wins": rate["wins"], "ties": rate["ties"], "losses": rate["losses"],
                               "both_bad": int((rows["outcome"] == "both_bad").sum()), "n": rate["n"],
                               "win_rate": number(rate["rate"]), "lower": number(rate["lower"]),
                               "upper": number(rate["upper"]), "length_controlled": number(lc),
                               "length_control_note": why}
        board = leaderboard(battles, language, focus, n_bootstrap=n_bootstrap, seed=seed, rater=rater)
        entry = {"opponents": opponents, "note": board["note"],
                 "ratings": [{k: (number(v) if k != "variant" else v) for k, v in r.items()}
                             for r in board["bradley_terry"].to_dict(orient="records")]}
        if rater != HUMAN:
            verdicts = rater_votes(battles[battles["language"] == language], rater)
            consistency, pairs = position_consistency(verdicts)
            entry |= {"position_consistency": number(consistency), "both_orders": pairs,
                      "first_shown": number(first_shown_share(verdicts))}
        out[language] = entry
    return out


def judge_board(votes: pd.DataFrame, judge: str, language: str | None = None, focus: str = "clo",
                n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, base: str | None = None) -> dict:
    """`judge`'s tables (`leaderboard` with rater=judge: the people's votes left out), and beside them
    "agreement": how far it agrees with the people on the answers both judged (clo.evaluate.agreement.agreement's
    dict: n, agreement and κ with their intervals) and "first_shown": the share of its verdicts that named the answer
    it was shown first (position bias: about ½ is none; NaN without verdicts), "position_consistency" and
    "both_orders": how often the two orders of a pair named the same winner, over how many pairs (NaN, 0 for
    verdicts asked in one order), and "follows_order": whether that is below CONSISTENCY_FLOOR. `base` as for
    `leaderboard`."""
    votes = of_base(votes, base)
    out = leaderboard(votes, language, focus, n_bootstrap=n_bootstrap, seed=seed, rater=judge)
    scoped = votes if language is None else votes[votes["language"] == language]
    out["agreement"] = agreement(votes, judge, language, n_bootstrap=n_bootstrap, seed=seed)
    mine = rater_votes(scoped, judge)
    out["first_shown"] = first_shown_share(mine)
    out["position_consistency"], out["both_orders"] = position_consistency(mine)
    out["follows_order"] = bool(out["both_orders"]) and out["position_consistency"] < CONSISTENCY_FLOOR
    return out


def answer_fidelity(votes: pd.DataFrame) -> pd.DataFrame:
    """Per variant (a retrained one apart, as in the ratings), the share of its answers in the prompt's language,
    from the language detected when each battle was made. A vote stored without it, or judged by an older version
    of the detector (`langid_version` below langid.VERSION), is judged again here, as the app judges answers now; a
    language lingua does not know keeps what the served model's own detector stored."""
    votes = version_keys(votes)
    rows = []
    for variant in sorted(set(votes.variant_a) | set(votes.variant_b)):
        pairs = []
        for side in ("a", "b"):
            mine = votes[votes[f"variant_{side}"] == variant]
            pairs += list(zip(mine["language"], answer_codes(mine, side)))
        f = code_fidelity(pairs)
        rows.append({"variant": variant, **{k: f[k] for k in COLUMNS["fidelity"][1:]}})
    return pd.DataFrame(rows, columns=COLUMNS["fidelity"])


def answer_codes(votes: pd.DataFrame, side: str) -> list[str]:
    """The language of each vote's answer on `side` ("a" or "b"): as stored when the battle was made, or judged
    again here when it is missing or came from an older detector (`current`)."""
    stored = votes[f"lang_{side}"] if f"lang_{side}" in votes else pd.Series(None, index=votes.index)
    versions = votes["langid_version"] if "langid_version" in votes else pd.Series(None, index=votes.index)
    return [code if current(code, version, lang) else rejudge(text, lang, prompt)
            for lang, code, version, text, prompt
            in zip(votes["language"], stored, versions, votes[f"answer_{side}"], votes["prompt"])]


def on_language(votes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Whether each vote's answer A and answer B is in its prompt's language (`answer_codes`)."""
    return tuple(np.array(answer_codes(votes, side), dtype=object) == votes["language"].to_numpy(dtype=object)
                 for side in ("a", "b"))


def style_tables(votes: pd.DataFrame, language: str | None, raters: dict[str, str | None],
                 plain: dict[str, pd.DataFrame], n_bootstrap: int = STYLE_BOOTSTRAP) -> dict[str, pd.DataFrame]:
    """The style-controlled ratings (clo.evaluate.style) beside the plain ones, for each rater with ratings:
    `raters` maps a label ("people", a judge's name) to its rater key, `plain` a label to its Bradley–Terry table
    (empty: no ratings yet, so none with style either)."""
    from clo.evaluate.style import style_bradley_terry

    ratings, coefficients = [], []
    for label, rater in raters.items():
        if plain.get(label) is None or plain[label].empty:
            continue
        rated = rated_battles(votes, language, rater)
        on_a, on_b = on_language(rated)
        fitted = style_bradley_terry(rated, on_a, on_b, n_bootstrap=n_bootstrap)
        before = dict(zip(plain[label]["variant"], plain[label]["rating"]))
        ratings.append(fitted["ratings"].assign(rater=label, **{"plain rating": fitted["ratings"]["variant"].map(before)}))
        coefficients.append(fitted["coefficients"][fitted["coefficients"]["used"]].assign(rater=label))
    return {"style": pd.concat(ratings)[COLUMNS["style"]].reset_index(drop=True) if ratings
            else pd.DataFrame(columns=COLUMNS["style"]),
            "style_coefficients": pd.concat(coefficients)[COLUMNS["style_coefficients"]].reset_index(drop=True)
            if coefficients else pd.DataFrame(columns=COLUMNS["style_coefficients"])}


def current(code, version, lang: str) -> bool:
    """Whether a stored language `code` stands: judged by this version of the detector, or (any version) in a
    language lingua does not know, which only the served model's own detector judges."""
    if not isinstance(code, str):
        return False
    return not known(lang) or (pd.notna(version) and int(version) >= LANGID_VERSION)


@functools.lru_cache(maxsize=65536)
def rejudge(text: str, lang: str, prompt: str) -> str:
    """An answer's language as the detector judges it now (a Leaderboard re-renders often: each answer is judged once
    a process)."""
    return detect(text, lang=lang, prompt=prompt).code


def judge_tables(votes: pd.DataFrame, language: str | None, people: dict, focus: str = "clo",
                 n_bootstrap: int = N_BOOTSTRAP) -> dict[str, pd.DataFrame]:
    """Per judge, from `judge_board`, beside the people's tables `people` (`leaderboard` of the people's votes):

    judge          its W/T/L for `focus` and win rate (ties count half) against each opponent, beside the people's
                   win rate and judged battles against the same opponent
    agreement      its agreement with the people (percent and Cohen's κ, bootstrap intervals), the share of its
                   choices that named the answer shown first and of its pairs whose two orders agreed, in %, and
                   whether it mostly follows the order shown
    judge_ratings  its Bradley–Terry rating of each variant (NaN while its verdicts are too few to rate, as for the
                   people) beside the people's rating
    """
    humans = people["wtl"].set_index("opponent")
    people_bt = people["bradley_terry"]
    people_rating = people_bt.set_index("variant")["rating"] if not people_bt.empty else pd.Series(dtype=float)
    rows, agree, ratings = [], [], []
    for judge in judges(votes):
        t = judge_board(votes, judge, language, focus, n_bootstrap)
        for r in t["wtl"].itertuples():
            person = humans.loc[r.opponent] if r.opponent in humans.index else None
            rows.append({"judge": judge, "opponent": r.opponent, "wins": r.wins, "ties": r.ties, "losses": r.losses,
                         "judge win %": r.win_pct + 0.5 * r.tie_pct,
                         "people win %": np.nan if person is None else person["win_pct"] + 0.5 * person["tie_pct"],
                         "people battles": 0 if person is None else int(person["wins"] + person["ties"] + person["losses"])})
        a = t["agreement"]
        agree.append({"judge": judge, "battles": a["n"], "agreement %": 100 * a["agreement"],
                      "lower %": 100 * a["agreement_lower"], "upper %": 100 * a["agreement_upper"], "κ": a["kappa"],
                      "κ lower": a["kappa_lower"], "κ upper": a["kappa_upper"], "first shown %": 100 * t["first_shown"],
                      "orders agree %": 100 * t["position_consistency"],
                      "follows the order": "yes: its win rates mean little" if t["follows_order"] else
                      ("no" if t["both_orders"] else "not asked both ways")})
        bt, counts = t["bradley_terry"].set_index("variant"), t["counts"]
        battles = counts.groupby("variant")[["wins", "ties", "losses"]].sum().sum(axis=1) if not counts.empty else {}
        for variant in bt.index if not bt.empty else sorted(set(counts["variant"])):
            rated = variant in bt.index
            ratings.append({"judge": judge, "variant": variant,
                            "judge rating": bt.at[variant, "rating"] if rated else math.nan,
                            "lower": bt.at[variant, "lower"] if rated else math.nan,
                            "upper": bt.at[variant, "upper"] if rated else math.nan,
                            "judge battles": int(battles.get(variant, 0)),
                            "people rating": people_rating.get(variant, math.nan)})
    return {"judge": pd.DataFrame(rows, columns=COLUMNS["judge"]),
            "agreement": pd.DataFrame(agree, columns=COLUMNS["agreement"]),
            "judge_ratings": pd.DataFrame(ratings, columns=COLUMNS["judge_ratings"])}


def tables(votes: pd.DataFrame, language: str | None = None, focus: str = "clo",
           n_bootstrap: int = N_BOOTSTRAP, base: str | None = None) -> dict:
    """Every table the Leaderboard tab shows, for one language (None = all) and one base model (`base`, as for
    `leaderboard`); {} without votes on it.

    The people's `leaderboard` (judge votes never enter it), "fidelity" (`answer_fidelity` of the people's answers,
    named votes included), `judge_tables`' "judge", "agreement" and "judge_ratings", and `style_tables`' "style"
    and "style_coefficients" (the ratings with the answers' style held equal, for the people and each judge).
    """
    votes = of_base(votes, base)
    if votes.empty:
        return {}
    out = leaderboard(votes, language, focus, n_bootstrap=n_bootstrap)
    scoped = rater_votes(votes if language is None else votes[votes["language"] == language], HUMAN, blind_only=False)
    out["fidelity"] = answer_fidelity(scoped)
    out["standings"] = standings(out)
    out |= judge_tables(votes, language, out, focus, n_bootstrap)
    raters = {"people": HUMAN} | {j: j for j in judges(votes)}
    plain = {"people": out["bradley_terry"]}
    for j in judges(votes):
        mine = out["judge_ratings"][out["judge_ratings"]["judge"] == j]
        plain[j] = mine.rename(columns={"judge rating": "rating"}) if mine["judge rating"].notna().any() else None
    out |= style_tables(votes, language, raters, plain)
    return out


def benchmarks_shown(results: pd.DataFrame, language: str | None, base: str) -> pd.DataFrame:
    """The Leaderboard's Benchmarks table: `clo.evaluate.benchmarks.benchmark_table` of the stored lm-evaluation-harness
    results on base model `base` (its key, as the votes are keyed: clo.evaluate.ratings.base_key) and `language`
    (None: every language), English retention included with a target language."""
    from clo.evaluate.benchmarks import benchmark_table
    from clo.evaluate.ratings import base_keys

    if results is None or results.empty:
        return benchmark_table(results.iloc[0:0] if results is not None else pd.DataFrame(), None)
    results = results[base_keys(results) == base]
    table = benchmark_table(results, None)
    if language is not None and not table.empty:
        table = table[table["language"].isin([language, "en"])]
    return table.reset_index(drop=True)

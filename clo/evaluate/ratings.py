"""Ratings from blind pairwise votes: vote counts, W/T/L, win-rate matrix, Bradley–Terry with bootstrap intervals, Elo.

Pure functions over a DataFrame of battles, one row per vote, in the order the votes were cast:

    variant_a  the variant shown on the left  ("base", or an adapter's name such as "clo-ko")
    variant_b  the variant shown on the right
    outcome    "a"         the left answer (variant_a) is better
               "b"         the right answer (variant_b) is better
               "tie"       both are equally good
               "both_bad"  neither is acceptable: reported, never counted as a tie; it is left out of the
                           win rates, Bradley–Terry and Elo, which rank answers that were judged against each other
    language   ISO 639-1 code of the prompt ("ko", "zh", ...)
    blind      optional bool: the voter did not know which variant was which. Only blind votes are rated;
               named votes (blind False) are stored and counted in `vote_summary`, and nothing else.
    judge      optional: None on a person's vote, else the name of the LLM judge that cast it (clo.evaluate.judge). Every
               function rates one rater's votes, `rater`: HUMAN (the default: the people, judge votes left out
               entirely) or a judge's name (only that judge's votes), so the two tallies never mix.
    pair_key   optional: what was judged (clo.evaluate.battles.pair_key); a person's vote and a judge's on the same answers
               share it, which is how clo.evaluate.agreement pairs them.
    base_model, base_hash  optional: the base model behind both answers (its name as served and its fingerprint).
               Ratings never mix bases: battles on more than one (`base_keys`) are refused; pick one with `of_base`.
    hash_a, hash_b  optional: the adapter hash behind each side (None for the base). A variant is rated by
               (name, hash): a name whose votes carry two hashes (an adapter retrained under the same name)
               becomes two variants, `clo-ko@1a2b3c` and `clo-ko@4d5e6f`, whose votes never mix.

Every function takes `language` (None = all languages). Conventions, for variant i against opponent j:

    wins, ties, losses  counted from i's side, whichever side of the screen i was shown on
    win rate        W_ij = (wins + ½·ties) / (wins + ties + losses)                      both_bad excluded
    Bradley–Terry   P(i beats j) = σ(θ_i − θ_j), θ by maximum likelihood on the aggregated counts, a tie
                    counting as half a win for each side, both_bad excluded;
                    rating_i = anchor_rating + 400·log10(e)·(θ_i − θ_anchor): 400 points = 10:1 odds.
                    95% interval: percentile bootstrap that redraws each pair's (wins, ties, losses)
                    ~ Multinomial(n_ij, (counts + ½) / (n_ij + 3/2)) and refits, 1,000 times. The ½ per outcome
                    (Jeffreys) keeps a one-way pair from resampling as certain; the interval always holds the
                    estimate and is wide when votes are few. The anchor has no interval (it is fixed, not measured).
                    Ratings are given only once they mean something: every pair that met has at least
                    MIN_PAIR_BATTLES judged battles and all rated variants are linked by battles (`rating_note`).
    Elo             online, K = 4, in row order, every variant starting at 1000 (FastChat's reference).

    >>> from clo.evaluate.ratings import bradley_terry, wtl_table
    >>> wtl_table(battles, focus="clo", language="ko")   # CLO wins / ties / losses against each opponent
    >>> bradley_terry(battles, language="ko", rater="Qwen/Qwen2.5-72B-Instruct")   # the judge's ratings, apart

The functions ending in `_of_counts` take `pair_counts`' table instead of the battles, so that the Leaderboard's
tables (clo.evaluate.board) aggregate the votes once; a judge's statistics and its agreement with people are in
clo.evaluate.agreement.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from clo import CLOError

OUTCOMES = ("a", "b", "tie", "both_bad")
COLUMNS = ("variant_a", "variant_b", "outcome", "language")
BASE = "base"  # the base model's variant name (clo.engines.base.BASE): the default Bradley–Terry anchor
PRIOR_SD = 2.0  # θ ~ N(0, 2²) in log-odds (347 points): keeps few one-way votes modest (5 straight wins: +460, not +910);
#                 with 100 votes a pair it moves a rating by a point or two
COUNTS = ("wins", "ties", "losses", "both_bad")
HUMAN = "human"  # the rater of the people's votes; a judge is named by its model name (the `judge` column)
SINGLE_ORDER = " (single order)"  # after a judge's name on its verdicts asked in one order only
MIN_PAIR_BATTLES = 5  # judged battles every pair that met needs before Bradley–Terry and Elo are shown
SMOOTHING = 0.5  # pseudo-count per outcome in the bootstrap's resampling shares (Jeffreys)
UNKNOWN_BASE = "unknown base"  # the base of votes stored before bases were recorded (schema < 8): never guessed


class BattlesError(CLOError, ValueError):
    """Malformed battles (a missing column, an unknown outcome): a ValueError the command line prints in one line."""


# ---- input ----

def check_battles(battles: pd.DataFrame) -> pd.DataFrame:
    """The battles with their columns checked; raises BattlesError naming what is wrong (rows by position).

    A frame with no rows is empty whatever its columns (an empty vote store), and gives empty tables.
    """
    if len(battles) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    missing = [c for c in COLUMNS if c not in battles.columns]
    if missing:
        have = ", ".join(map(str, battles.columns))
        raise BattlesError(f"battles lack column(s) {', '.join(missing)} (have: {have})")
    unknown = ~battles["outcome"].isin(OUTCOMES).to_numpy()
    if unknown.any():
        row = int(unknown.argmax())
        others = f" and {unknown.sum() - 1} more" if unknown.sum() > 1 else ""
        raise BattlesError(f"unknown outcome {battles['outcome'].iloc[row]!r} in row {row}{others}; "
                           f"expected one of {', '.join(map(repr, OUTCOMES))}")
    for side in ("variant_a", "variant_b"):
        if battles[side].isna().any():
            raise BattlesError(f"row {int(battles[side].isna().to_numpy().argmax())} has no {side}")
    same = (battles["variant_a"] == battles["variant_b"]).to_numpy()
    if same.any():
        row = int(same.argmax())
        raise BattlesError(f"row {row} puts {battles['variant_a'].iloc[row]!r} against itself")
    found = bases(battles)
    if len(found) > 1:
        raise BattlesError(f"these votes are on {len(found)} base models ({', '.join(b['label'] for b in found)}): "
                           "ratings are per base model, so choose one (of_base; --base on the command line)")
    return battles


# ---- base models: one experiment per base ----

def base_key(name: str | None, digest: str | None) -> str:
    """The key of one base model: its fingerprint where known, else its name, else UNKNOWN_BASE (`base_keys` per
    vote; the Arena and the Leaderboard key the served base the same way)."""
    return digest or name or UNKNOWN_BASE


def base_label(name: str | None, key: str) -> str:
    """How a base model is shown: the name it was served under, with the fingerprint's first 8 hex digits where the
    key is one."""
    if name is None:
        return key
    return name if key == name else f"{name} ({key.split(':')[-1][:8]})"


def base_keys(battles: pd.DataFrame) -> pd.Series:
    """Which base model each vote's answers came from: its fingerprint where recorded (a copy at another path is the
    same base, another model at the same path is not), else its name, else UNKNOWN_BASE."""
    if len(battles) == 0 or "base_model" not in battles.columns:
        return pd.Series(UNKNOWN_BASE, index=battles.index, dtype=object)
    name = battles["base_model"].astype(object).where(battles["base_model"].notna(), None)
    digest = battles["base_hash"].astype(object).where(battles["base_hash"].notna(), None) \
        if "base_hash" in battles.columns else pd.Series(None, index=battles.index, dtype=object)
    return digest.where(digest.notna(), name).where(digest.notna() | name.notna(), UNKNOWN_BASE)


def bases(battles: pd.DataFrame) -> list[dict]:
    """The base models of these votes, the most recently voted on first: each {"key", "label", "votes"}; the label
    is the newest name it was served under, with the fingerprint's first 8 hex digits where there is one."""
    if len(battles) == 0:
        return []
    keys = base_keys(battles)
    names = battles["base_model"] if "base_model" in battles.columns else pd.Series(None, index=battles.index)
    out = []
    for key in reversed(list(dict.fromkeys(reversed(list(keys))))):  # by last appearance, rows oldest first
        mine = keys == key
        served = names[mine].dropna()
        name = str(served.iloc[-1]) if len(served) else None
        out.append({"key": key, "label": base_label(name, key), "votes": int(mine.sum())})
    return out[::-1]


def of_base(battles: pd.DataFrame, base: str | None) -> pd.DataFrame:
    """The votes on one base model: `base` is a key or label of `bases`, or a name it was served under; None keeps
    them all (rating them then needs a single base). Raises BattlesError naming the bases there are."""
    if base is None or len(battles) == 0:
        return battles
    keys, found = base_keys(battles), bases(battles)
    names = battles["base_model"] if "base_model" in battles.columns else pd.Series(None, index=battles.index)
    match = [b["key"] for b in found if base in (b["key"], b["label"])] or sorted(set(keys[names == base]))
    if len(match) != 1:
        listed = "; ".join(f"{b['label']} ({b['votes']} votes)" for b in found)
        what = "names several" if match else "is none of them"
        raise BattlesError(f"base {base!r} {what}: the votes' base models are {listed}")
    return battles[keys == match[0]]


def _blind(battles: pd.DataFrame) -> pd.Series:
    if "blind" not in battles.columns:
        return pd.Series(True, index=battles.index)
    return battles["blind"].astype(object).where(battles["blind"].notna(), False).astype(bool)


def _leaked(battles: pd.DataFrame) -> pd.Series:
    """Votes whose battle told who answered (clo.evaluate.leaks: `leak` set): stored and counted, never rated."""
    if "leak" not in battles.columns:
        return pd.Series(False, index=battles.index)
    return battles["leak"].notna() & (battles["leak"].astype(object) != "")


def anonymous(battles: pd.DataFrame) -> pd.Series:
    """The votes a rating may count: blind, and no identity given away (not `_leaked`)."""
    return _blind(battles) & ~_leaked(battles)


def _raters(battles: pd.DataFrame) -> pd.Series:
    """Who cast each row: None for a person, else the judge's name, with SINGLE_ORDER after it on a verdict asked
    in one order only (stored before judges were asked both ways, `judge_orders` NULL), so such verdicts are never
    mixed with the same judge's two-order verdicts and say what they are wherever a judge is named."""
    judge = battles["judge"].astype(object)
    is_judge = judge.notna() & (judge.astype(str).str.strip() != "")
    names = judge.where(is_judge, None)
    if "judge_orders" in battles.columns:
        single = is_judge & battles["judge_orders"].isna()
        names = names.where(~single, names.astype(str) + SINGLE_ORDER)
    return names


def _by(battles: pd.DataFrame, rater: str) -> pd.Series:
    """Which rows `rater` cast: HUMAN = the votes without a judge, else the votes of the judge of that name (a
    single-order verdict's judge is named "<judge> (single order)")."""
    if "judge" not in battles.columns:
        return pd.Series(rater == HUMAN, index=battles.index)
    names = _raters(battles)
    return names.isna() if rater == HUMAN else names.notna() & (names == rater)


def rater_votes(battles: pd.DataFrame, rater: str = HUMAN, blind_only: bool = True) -> pd.DataFrame:
    """`rater`'s votes (HUMAN: the people's) as stored, variants not versioned; blind ones only unless asked."""
    keep = _by(battles, rater)
    return battles[keep & _blind(battles)] if blind_only else battles[keep]


def judges(battles: pd.DataFrame) -> list[str]:
    """The names of the judges that voted (sorted; a single-order verdict's judge as "<judge> (single order)"); none
    when every vote is a person's."""
    if len(battles) == 0 or "judge" not in battles.columns:
        return []
    return sorted(set(_raters(battles).dropna().astype(str)))


def version_keys(battles: pd.DataFrame) -> pd.DataFrame:
    """The battles with each variant named by (name, adapter hash): a name that appears with more than one hash
    (in hash_a / hash_b) becomes `name@<first 6 hex digits>` per hash (`name@?` where a vote has none), so the
    votes on a retrained adapter stay apart from the old one's. Without hash columns, names are left as they are."""
    if len(battles) == 0 or not {"hash_a", "hash_b"} <= set(battles.columns):
        return battles
    sides = pd.concat([pd.DataFrame({"name": battles["variant_a"], "hash": battles["hash_a"]}),
                       pd.DataFrame({"name": battles["variant_b"], "hash": battles["hash_b"]})])
    versions = sides.astype(object).where(sides.notna(), None).groupby("name")["hash"].agg(lambda h: len(set(h)))
    several = set(versions[versions > 1].index)
    if not several:
        return battles
    out = battles.copy()
    for side in ("a", "b"):
        name, digest = out[f"variant_{side}"], out[f"hash_{side}"]
        tag = digest.astype(object).map(lambda h: str(h)[:6] if isinstance(h, str) and h else "?")
        out[f"variant_{side}"] = name.where(~name.isin(several), name + "@" + tag)
    return out


def rated_battles(battles: pd.DataFrame, language: str | None = None, rater: str = HUMAN) -> pd.DataFrame:
    """The battles that count toward ratings: checked, cast by `rater` (HUMAN: people only), blind only and not
    leaked (`_leaked`), of one language (None = all), variants named by `version_keys`."""
    battles = check_battles(battles)
    keep = anonymous(battles) & _by(battles, rater)
    if language is not None:
        keep &= battles["language"] == language
    return version_keys(battles[keep])


def vote_summary(battles: pd.DataFrame, language: str | None = None, rater: str = HUMAN) -> pd.DataFrame:
    """`rater`'s votes (HUMAN: people only; a judge's are never counted here) per language, then an "all" row:
    stored, named (excluded from ratings), leaked (blind, but an answer or the prompt gave an identity away:
    clo.evaluate.leaks; excluded too), rated, and the rated ones by outcome (a, b, tie, both_bad)."""
    battles = check_battles(battles)
    battles = battles[_by(battles, rater)]
    if language is not None:
        battles = battles[battles["language"] == language]
    blind, leaked = _blind(battles), _leaked(battles)
    rated = blind & ~leaked
    frame = pd.DataFrame({"language": battles["language"].astype(object).fillna("?"), "stored": 1,
                          "named": (~blind).astype(int), "leaked": (blind & leaked).astype(int),
                          "rated": rated.astype(int)})
    for outcome in OUTCOMES:
        frame[outcome] = (rated & (battles["outcome"] == outcome)).astype(int)
    table = frame.groupby("language", sort=True).sum().reset_index()
    if language is None:
        table = pd.concat([table, frame.drop(columns="language").sum().to_frame().T.assign(language="all")])
    columns = ["language", "stored", "named", "leaked", "rated", *OUTCOMES]
    return table[columns].astype({c: int for c in columns[1:]}).reset_index(drop=True)


# ---- counts ----

def pair_counts(battles: pd.DataFrame, language: str | None = None, rater: str = HUMAN) -> pd.DataFrame:
    """Outcome counts of every pair of variants that met, in both orientations (rated battles only).

    One row per (variant, opponent): wins, ties, losses of `variant` against `opponent` whichever side it
    was shown on, both_bad, and battles = all four. The row (j, i) mirrors (i, j): its wins are (i, j)'s losses.
    """
    rated = rated_battles(battles, language, rater)
    columns = ["variant", "opponent", *COUNTS, "battles"]
    if rated.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("variant", "opponent") else int) for c in columns})
    per_side = rated.groupby(["variant_a", "variant_b", "outcome"], observed=True).size().unstack(fill_value=0)
    per_side = per_side.reindex(columns=list(OUTCOMES), fill_value=0).reset_index()
    left = pd.DataFrame({"variant": per_side["variant_a"], "opponent": per_side["variant_b"], "wins": per_side["a"],
                         "ties": per_side["tie"], "losses": per_side["b"], "both_bad": per_side["both_bad"]})
    right = left.rename(columns={"variant": "opponent", "opponent": "variant", "wins": "losses", "losses": "wins"})
    both = pd.concat([left, right]).astype({"variant": object, "opponent": object})
    table = both.groupby(["variant", "opponent"], sort=True)[list(COUNTS)].sum().reset_index()
    table["battles"] = table[list(COUNTS)].sum(axis=1)
    return table[columns].astype({c: int for c in (*COUNTS, "battles")})


def is_focus(variants: pd.Series, focus: str) -> pd.Series:
    return (variants == focus) | variants.str.startswith(f"{focus}-") | variants.str.startswith(f"{focus}@")


def wtl_of_counts(counts: pd.DataFrame, focus: str) -> pd.DataFrame:
    """`wtl_table` from `pair_counts`' table."""
    mine = counts[is_focus(counts["variant"], focus) & ~is_focus(counts["opponent"], focus)]
    table = mine.groupby("opponent", sort=True)[[*COUNTS, "battles"]].sum().reset_index()
    judged = (table["wins"] + table["ties"] + table["losses"]).replace(0, np.nan)
    for name, column in (("win", "wins"), ("tie", "ties"), ("loss", "losses")):
        table[f"{name}_pct"] = 100 * table[column] / judged
    table["both_bad_pct"] = 100 * table["both_bad"] / table["battles"].replace(0, np.nan)
    return table.astype({c: int for c in (*COUNTS, "battles")})


def wtl_table(battles: pd.DataFrame, focus: str = "clo", language: str | None = None, rater: str = HUMAN
              ) -> pd.DataFrame:
    """Wins / ties / losses of the focus variant against each opponent, as in the Korean-transfer study's
    "CLO wins / tie / CLO losses" table.

    focus: a variant name, or a method name that also covers the variants named `{focus}-{lang}` (the default
    adapter names), so "clo" gathers clo-ko and clo-zh; battles between two focus variants are left out.
    One row per opponent: wins, ties, losses, both_bad, battles (all four), then win_pct + tie_pct + loss_pct = 100
    over the judged battles (both_bad excluded) and both_bad_pct over all battles.
    """
    return wtl_of_counts(pair_counts(battles, language, rater), focus)


def _matrix(counts: pd.DataFrame, values: pd.Series) -> pd.DataFrame:
    names = sorted(set(counts["variant"]))
    matrix = counts.assign(value=values).pivot(index="variant", columns="opponent", values="value")
    return matrix.reindex(index=names, columns=names).rename_axis(index="variant", columns="opponent")


def win_rate_matrix(battles: pd.DataFrame, language: str | None = None, rater: str = HUMAN) -> pd.DataFrame:
    """W[i, j] = (wins + ½·ties) / (wins + ties + losses) of variant i (row) against opponent j (column).

    both_bad battles are left out; W[i, j] + W[j, i] = 1; NaN on the diagonal and where a pair never met
    (or met only in both_bad battles).
    """
    return win_rates_of_counts(pair_counts(battles, language, rater))


def win_rates_of_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """`win_rate_matrix` from `pair_counts`' table."""
    judged = (counts["wins"] + counts["ties"] + counts["losses"]).replace(0, np.nan)
    return _matrix(counts, (counts["wins"] + 0.5 * counts["ties"]) / judged)


def count_matrix(battles: pd.DataFrame, language: str | None = None, rater: str = HUMAN) -> pd.DataFrame:
    """Number of judged battles (wins + ties + losses, both_bad excluded) behind each cell of `win_rate_matrix`."""
    return judged_of_counts(pair_counts(battles, language, rater))


def judged_of_counts(counts: pd.DataFrame) -> pd.DataFrame:
    """`count_matrix` from `pair_counts`' table."""
    return _matrix(counts, counts["wins"] + counts["ties"] + counts["losses"]).fillna(0).astype(int)


# ---- Bradley–Terry ----

def fit_bradley_terry(i: np.ndarray, j: np.ndarray, wins: np.ndarray, totals: np.ndarray, n_variants: int
                      ) -> np.ndarray:
    """Maximum-likelihood Bradley–Terry strengths θ (natural log-odds) from aggregated counts.

    i, j: [P] variant indices of each pair; wins: [P] or [B, P] wins of i over j, ties counted ½;
    totals: [P] or [B, P] judged battles of the pair. With a leading batch axis B the B problems are fitted
    together, as one sum, in a single L-BFGS run (the bootstrap's resamples). Returns θ [V] or [B, V].

        −log L = Σ_p  n_p·softplus(−d_p) + (n_p − w_p)·d_p,   d_p = θ_i − θ_j
        plus Σ θ² / (2·PRIOR_SD²), a weak prior: it keeps θ finite and modest when a variant won or lost every
        battle, and moves well-measured ratings by a point or two.
    """
    batched = np.ndim(wins) == 2
    wins = np.atleast_2d(np.asarray(wins, dtype=float))
    totals = np.broadcast_to(np.atleast_2d(np.asarray(totals, dtype=float)), wins.shape)
    batch = wins.shape[0]
    incidence = np.zeros((len(i), n_variants))
    incidence[np.arange(len(i)), i] += 1.0
    incidence[np.arange(len(i)), j] -= 1.0
    scale = totals.sum(axis=1, keepdims=True).clip(min=1.0)  # each problem's loss per battle, so gradients are O(1)
    ridge = 1.0 / PRIOR_SD**2

    def loss_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        theta = flat.reshape(batch, n_variants)
        d = theta @ incidence.T
        loss = (totals * np.logaddexp(0.0, -d) + (totals - wins) * d).sum(axis=1) + 0.5 * ridge * (theta**2).sum(1)
        grad_d = totals * expit(d) - wins
        grad = grad_d @ incidence + ridge * theta
        return float((loss / scale[:, 0]).sum()), (grad / scale).ravel()

    result = minimize(loss_and_grad, np.zeros(batch * n_variants), jac=True, method="L-BFGS-B",
                      options={"maxiter": 1000, "gtol": 1e-9, "ftol": 1e-14})
    theta = result.x.reshape(batch, n_variants)
    return theta if batched else theta[0]


def bradley_terry(
    battles: pd.DataFrame,
    language: str | None = None,
    anchor: str | None = None,
    anchor_rating: float = 1000.0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    rater: str = HUMAN,
) -> pd.DataFrame:
    """Bradley–Terry ratings of `rater`'s votes with percentile-bootstrap intervals, best first.

    anchor: the variant pinned at `anchor_rating` (its interval is then that point); None = "base" when it has
    judged battles, else the ratings are centred on `anchor_rating`. Columns: variant, rating (the fit on the
    observed counts), lower, upper (the `confidence` percentile interval over `n_bootstrap` resamples; NaN with
    0 resamples), battles (judged battles of the variant). The bootstrap redraws each pair's (wins, ties, losses)
    from a multinomial with the pair's total and observed shares (numpy Generator seeded with `seed`), so its
    cost does not grow with the number of votes.
    """
    return bradley_terry_of_counts(pair_counts(battles, language, rater), anchor, anchor_rating, n_bootstrap,
                                   confidence, seed)


def bradley_terry_of_counts(counts: pd.DataFrame, anchor: str | None = None, anchor_rating: float = 1000.0,
                            n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """`bradley_terry` from `pair_counts`' table (the votes aggregated once)."""
    counts = counts[counts["variant"] < counts["opponent"]]
    outcomes = counts[["wins", "ties", "losses"]].to_numpy(dtype=float)
    judged = outcomes.sum(axis=1)
    counts, outcomes, judged = counts[judged > 0], outcomes[judged > 0], judged[judged > 0]
    names = sorted(set(counts["variant"]) | set(counts["opponent"]))
    columns = ["variant", "rating", "lower", "upper", "battles"]
    if not names:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "variant" else float) for c in columns})
    if anchor is not None and anchor not in names:
        raise BattlesError(f"anchor {anchor!r} has no judged battles; rated variants: {', '.join(names)}")
    if anchor is None and BASE in names:
        anchor = BASE
    index = {name: k for k, name in enumerate(names)}
    i, j = counts["variant"].map(index).to_numpy(), counts["opponent"].map(index).to_numpy()

    def to_ratings(theta: np.ndarray) -> np.ndarray:
        origin = theta[..., [index[anchor]]] if anchor is not None else theta.mean(axis=-1, keepdims=True)
        return anchor_rating + 400.0 / math.log(10.0) * (theta - origin)

    wins = outcomes[:, 0] + 0.5 * outcomes[:, 1]
    rating = to_ratings(fit_bradley_terry(i, j, wins, judged, len(names)))
    lower = upper = np.full(len(names), np.nan)
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        shares = (outcomes + SMOOTHING) / (judged + 3 * SMOOTHING)[:, None]
        draws = rng.multinomial(judged.astype(np.int64), shares, size=(n_bootstrap, len(judged)))
        theta = fit_bradley_terry(i, j, draws[..., 0] + 0.5 * draws[..., 1], judged, len(names))
        alpha = 100 * (1 - confidence) / 2
        lower, upper = np.percentile(to_ratings(theta), [alpha, 100 - alpha], axis=0)
        lower, upper = np.minimum(lower, rating), np.maximum(upper, rating)  # the interval holds the estimate
        if anchor is not None:  # pinned by definition: no interval rather than a zero-width one
            lower[index[anchor]] = upper[index[anchor]] = np.nan
    per_variant = np.bincount(i, judged, len(names)) + np.bincount(j, judged, len(names))
    table = pd.DataFrame({"variant": names, "rating": rating, "lower": lower, "upper": upper,
                          "battles": per_variant.astype(int)})
    return table.sort_values("rating", ascending=False, kind="stable").reset_index(drop=True)


def rating_note(counts: pd.DataFrame, min_battles: int = MIN_PAIR_BATTLES) -> str | None:
    """Why ratings cannot be given yet (None when they can), from `pair_counts`.

    Ratings need two variants or more, at least `min_battles` judged battles (both_bad excluded) for every pair
    that met, and one connected set of variants: two groups that never met have no common scale. A pair that
    never met is fine when others link it (base–SFT and SFT–CLO rate base against CLO).
    """
    pairs = counts[counts["variant"] < counts["opponent"]]
    judged = pairs["wins"] + pairs["ties"] + pairs["losses"]
    pairs, judged = pairs[judged > 0], judged[judged > 0]
    n = int(judged.sum())
    if pairs.empty:
        return f"not enough votes to rate yet (n = {n})"
    short = judged < min_battles
    if short.any():
        k = int(short.to_numpy().argmax())
        few = f"{pairs['variant'].iloc[k]} vs {pairs['opponent'].iloc[k]} has {int(judged.iloc[k])}"
        return f"not enough votes to rate yet (n = {n}): every pair that met needs {min_battles} judged votes; {few}"
    group = {v: v for v in set(pairs["variant"]) | set(pairs["opponent"])}

    def root(v: str) -> str:
        while group[v] != v:
            v = group[v]
        return v

    for a, b in zip(pairs["variant"], pairs["opponent"]):
        group[root(a)] = root(b)
    roots = {root(v) for v in group}
    if len(roots) > 1:
        parts = " | ".join(sorted(", ".join(sorted(v for v in group if root(v) == r)) for r in roots))
        return f"no common scale yet (n = {n}): these groups of variants never met: {parts}"
    return None


# ---- Elo ----

def elo_ratings(battles: pd.DataFrame, language: str | None = None, k: float = 4.0, initial: float = 1000.0,
                rater: str = HUMAN) -> pd.DataFrame:
    """Online Elo in row order (sort the battles by time first), for reference next to Bradley–Terry.

    E_a = 1 / (1 + 10^((R_b − R_a)/400)),  R_a += K·(S_a − E_a),  R_b += K·(E_a − S_a),
    S_a = 1, ½, 0 for a, tie, b; both_bad battles are skipped. K = 4 as in FastChat's reference implementation:
    it depends on the order of the votes, which Bradley–Terry does not. Columns: variant, rating, battles.
    """
    rated = rated_battles(battles, language, rater)
    rated = rated[rated["outcome"] != "both_bad"]
    ratings: dict[str, float] = {}
    played: dict[str, int] = {}
    score = {"a": 1.0, "tie": 0.5, "b": 0.0}
    for a, b, outcome in zip(rated["variant_a"].tolist(), rated["variant_b"].tolist(), rated["outcome"].tolist()):
        ra, rb = ratings.get(a, initial), ratings.get(b, initial)
        delta = k * (score[outcome] - 1.0 / (1.0 + 10.0 ** ((rb - ra) / 400.0)))
        ratings[a], ratings[b] = ra + delta, rb - delta
        played[a], played[b] = played.get(a, 0) + 1, played.get(b, 0) + 1
    table = pd.DataFrame({"variant": pd.Series(list(ratings), dtype=object),
                          "rating": pd.Series(list(ratings.values()), dtype=float),
                          "battles": pd.Series([played[v] for v in ratings], dtype=int)})
    return table.sort_values(["rating", "variant"], ascending=[False, True], kind="stable").reset_index(drop=True)

"""How far a judge's numbers can be trusted: a win rate with its interval, the length-controlled win rate, Cohen's κ,
and a judge's agreement with the people. Pure functions over score arrays, label sequences or battles (the battles
DataFrame of clo.evaluate.ratings, whose docstring gives its columns and outcome encoding).

    win_rate_interval(scores)          the win rate of one side from per-item scores (1 win, ½ tie, 0 loss), with a
                                       percentile-bootstrap interval (AlpacaEval's `win_rate`)
    length_controlled_win_rate(...)    AlpacaEval 2's logistic fit on the length difference, read at no difference
    length_control(...)                that rate, or NaN and why when the fit cannot tell (too few pairs, separated)
    cohen_kappa(labels_1, labels_2)    κ between two raters' labels of the same items
    agreement_interval(...)            percent agreement and κ, each with a bootstrap interval
    winner_labels(battles)             each vote's verdict whichever side was shown where
    agreement(battles, judge)          people vs judge on the answers both judged

    >>> from clo.evaluate.agreement import agreement
    >>> agreement(battles, judge="Qwen/Qwen2.5-72B-Instruct", language="ko")   # {"n", "agreement", "kappa", ...}

A judge's position bias (the share of its verdicts naming the answer shown first) is clo.evaluate.judge.run's
`first_shown_share`; the Leaderboard's judge tables put these together (clo.evaluate.board).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from clo import CLOError
from clo.evaluate.ratings import check_battles, rater_votes


def win_rate_interval(scores, n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Win rate of one side from its per-item scores (1 win, ½ tie, 0 loss), with a percentile-bootstrap interval.

        win rate = (wins + ½·ties) / n          (AlpacaEval's `win_rate`, here a share in [0, 1])
        interval: the items resampled with replacement `n_bootstrap` times (numpy Generator seeded with `seed`),
                  the (1 − confidence)/2 and (1 + confidence)/2 percentiles of the resampled rates

    Returns {"rate", "lower", "upper", "n", "wins", "ties", "losses"}; rate and bounds are NaN with no items, the
    bounds NaN with 0 resamples.
    """
    scores = np.asarray(scores, dtype=float).ravel()
    bad = ~np.isin(scores, (0.0, 0.5, 1.0))
    if bad.any():
        raise CLOError(f"a win-rate score is 1 (win), 0.5 (tie) or 0 (loss), got {float(scores[bad][0]):g}")
    n = len(scores)
    out = {"rate": float(scores.mean()) if n else math.nan, "lower": math.nan, "upper": math.nan, "n": n,
           "wins": int((scores == 1).sum()), "ties": int((scores == 0.5).sum()), "losses": int((scores == 0).sum())}
    if n and n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        rates = scores[rng.integers(0, n, size=(n_bootstrap, n))].mean(axis=1)
        alpha = 100 * (1 - confidence) / 2
        out["lower"], out["upper"] = (float(x) for x in np.percentile(rates, [alpha, 100 - alpha]))
    return out


def length_controlled_win_rate(scores, length_first, length_second) -> float:
    """AlpacaEval 2's length-controlled win rate of the first side: the win rate it would have were its answers as
    long as the second side's.

    A logistic GLM of the per-item preference y (1 win, ½ tie, 0 loss: a fractional response, fitted by maximum
    likelihood on the Bernoulli log-likelihood, scipy's L-BFGS-B) on the standardised length difference,

        logit P(first wins) = β0 + β1·tanh(Δ / sd(Δ)),   Δ = len(first answer) − len(second answer) in characters,

    then read at Δ = 0: LC = σ(β0). This is AlpacaEval 2's `length_controlled_minimal` model: its default model
    adds a per-instruction difficulty that is estimated from its own 805 instructions and many other models'
    answers, which a prompt set of one's own does not have. With no length difference (sd(Δ) = 0) the fit is the
    intercept alone and LC equals the plain win rate; a first side that wins or loses every item gives 1 or 0.
    It fits whatever it is given: `length_control` says when the fit means nothing.
    """
    return _length_fit(scores, length_first, length_second)[0]


LC_MIN_ITEMS = 20  # fewer pairs leave the length term unidentified (AlpacaEval fits it on 805 instructions)
LC_BOUND = 30.0  # |β0|, |β1| at most this in the fit: a coefficient that reaches it means separation


def length_control(scores, length_first, length_second, min_items: int = LC_MIN_ITEMS) -> tuple[float, str | None]:
    """`length_controlled_win_rate` when the fit can say something, else (NaN, why): with fewer than `min_items`
    pairs the length term is not identified, and when a coefficient reaches its bound (±LC_BOUND) the fit is
    separated (the length difference alone tells the wins from the losses), so the rate read at Δ = 0 is an artefact
    of the bound (5 pairs with a plain win rate of 70% gave 99.999%), not a preference. The model is the minimal one
    described there: no per-instruction difficulty, no penalty on β1."""
    y = np.asarray(scores, dtype=float).ravel()
    if len(y) < min_items:
        return math.nan, f"length control not identifiable here: {len(y)} pairs, it needs {min_items}"
    lc, beta = _length_fit(scores, length_first, length_second)
    if beta is not None and np.any(np.abs(beta) >= 0.999 * LC_BOUND):
        return math.nan, "length control not identifiable here: the answers' length alone separates wins from losses"
    return lc, None


def _length_fit(scores, length_first, length_second) -> tuple[float, np.ndarray | None]:
    """The LC rate and the fitted (β0, β1); None for β when there was nothing to fit (the plain rate returned)."""
    y = np.asarray(scores, dtype=float).ravel()
    delta = np.asarray(length_first, dtype=float).ravel() - np.asarray(length_second, dtype=float).ravel()
    if len(y) != len(delta):
        raise CLOError(f"{len(y)} scores but {len(delta)} length differences")
    if len(y) == 0:
        return math.nan, None
    spread = delta.std(ddof=1) if len(y) > 1 else 0.0
    if spread == 0 or y.min() == y.max():  # nothing for the length term to explain: the intercept is the mean
        return float(y.mean()), None
    x = np.tanh(delta / spread)

    def loss_and_grad(beta: np.ndarray) -> tuple[float, np.ndarray]:
        z = beta[0] + beta[1] * x
        loss = -(y * log_expit(z) + (1 - y) * log_expit(-z)).mean()
        residual = (expit(z) - y) / len(y)
        return float(loss), np.array([residual.sum(), (residual * x).sum()])

    fit = minimize(loss_and_grad, np.zeros(2), jac=True, method="L-BFGS-B", bounds=[(-LC_BOUND, LC_BOUND)] * 2,
                   options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 1000})
    return float(expit(fit.x[0])), fit.x


def cohen_kappa(labels_1, labels_2) -> float:
    """Cohen's κ between two raters' labels of the same items (any hashable labels):

        κ = (p_o − p_e) / (1 − p_e),   p_o = share of items labelled alike,
                                       p_e = Σ_k p_1(k)·p_2(k), the agreement expected by chance from each
                                             rater's own label shares

    1 = perfect agreement, 0 = no better than chance, < 0 = worse (−1 for two labels always swapped with equal
    shares). NaN when p_e = 1 (both raters gave one and the same label to everything: κ is undefined) or no items.
    """
    a, b = _labels(labels_1, labels_2)
    if len(a) == 0:
        return math.nan
    return float(_kappa(*_codes(a, b))[0])


def _labels(labels_1, labels_2) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(list(labels_1), dtype=object), np.asarray(list(labels_2), dtype=object)
    if len(a) != len(b):
        raise CLOError(f"two raters' labels must be of the same items: got {len(a)} and {len(b)}")
    return a, b


def _codes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    names = {label: k for k, label in enumerate(sorted(set(a) | set(b), key=str))}
    return np.array([names[x] for x in a]), np.array([names[x] for x in b]), len(names)


def _kappa(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """κ of label codes a, b: [n] or [B, n] (a batch of resamples); returns [B] (NaN where p_e = 1)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    n = a.shape[1]
    observed = (a == b).mean(axis=1)
    share_a = np.stack([(a == c).mean(axis=1) for c in range(k)], axis=1)
    share_b = np.stack([(b == c).mean(axis=1) for c in range(k)], axis=1)
    expected = (share_a * share_b).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(np.isclose(expected, 1.0), np.nan, (observed - expected) / (1.0 - expected))
    return kappa if n else np.full(len(a), np.nan)


def agreement_interval(labels_1, labels_2, n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Percent agreement and Cohen's κ between two raters' labels of the same items, each with a percentile-bootstrap
    interval (items resampled with replacement; resamples where κ is undefined are left out of κ's).

    Returns {"n", "agreement", "agreement_lower", "agreement_upper", "kappa", "kappa_lower", "kappa_upper"};
    agreement is a share in [0, 1].
    """
    a, b = _labels(labels_1, labels_2)
    n = len(a)
    out = {"n": n, "agreement": math.nan, "agreement_lower": math.nan, "agreement_upper": math.nan,
           "kappa": math.nan, "kappa_lower": math.nan, "kappa_upper": math.nan}
    if n == 0:
        return out
    ca, cb, k = _codes(a, b)
    out["agreement"], out["kappa"] = float((ca == cb).mean()), float(_kappa(ca, cb, k)[0])
    if n_bootstrap > 0:
        rows = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
        alpha = 100 * (1 - confidence) / 2
        same = (ca[rows] == cb[rows]).mean(axis=1)
        out["agreement_lower"], out["agreement_upper"] = (float(x) for x in np.percentile(same, [alpha, 100 - alpha]))
        kappas = _kappa(ca[rows], cb[rows], k)
        if np.isfinite(kappas).any():
            out["kappa_lower"], out["kappa_upper"] = (float(x) for x in np.nanpercentile(kappas, [alpha, 100 - alpha]))
    return out


def side_scores(rows: pd.DataFrame, first_is_a: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One side's score in each vote (1 win, ½ tie, 0 loss) and the lengths of its answer and of the other's, in
    characters: what `win_rate_interval` and `length_control` take. `first_is_a` marks the votes where that side
    was shown as A."""
    won = (first_is_a & (rows["outcome"] == "a")) | (~first_is_a & (rows["outcome"] == "b"))
    scores = won.astype(float) + 0.5 * (rows["outcome"] == "tie")
    length_a, length_b = rows["answer_a"].str.len(), rows["answer_b"].str.len()
    return (scores.to_numpy(), length_a.where(first_is_a, length_b).to_numpy(),
            length_b.where(first_is_a, length_a).to_numpy())


def winner_labels(battles: pd.DataFrame) -> pd.Series:
    """Each vote's verdict whichever side was shown where: the winning variant's name, "tie" or "both_bad"."""
    outcome = battles["outcome"]
    return pd.Series(np.where(outcome == "a", battles["variant_a"], np.where(outcome == "b", battles["variant_b"],
                                                                             outcome)), index=battles.index, dtype=object)


def agreement(battles: pd.DataFrame, judge: str, language: str | None = None, n_bootstrap: int = 2000,
              seed: int = 0) -> dict:
    """How far `judge` agrees with the people, on the answers both judged: every blind human vote (not both_bad,
    which a judge cannot say) whose pair_key the judge also judged is one item, labelled by `winner_labels` on
    both sides (the judge's latest verdict on that pair). Returns `agreement_interval`'s dict."""
    battles = check_battles(battles)
    if len(battles) == 0 or "pair_key" not in battles.columns:
        return agreement_interval([], [], 0)
    if language is not None:
        battles = battles[battles["language"] == language]
    people = rater_votes(battles)
    people = people[people["outcome"] != "both_bad"]
    verdicts = rater_votes(battles, judge, blind_only=False)
    verdict = pd.Series(winner_labels(verdicts).to_numpy(), index=verdicts["pair_key"].to_numpy())
    verdict = verdict[~verdict.index.duplicated(keep="last")]
    both = people[people["pair_key"].isin(verdict.index)]
    return agreement_interval(winner_labels(both), verdict.reindex(both["pair_key"]).to_numpy(), n_bootstrap,
                              seed=seed)

"""Style-controlled Bradley–Terry: the ratings with the answers' style held equal (length, markdown, language).

People (and LLM judges) prefer longer and better-formatted answers whatever their content, and in a cross-lingual
demo the most visible style is the answer's language: an answer in the prompt's language is preferred, and one in
English gives the base model away. Chatbot Arena reports ratings with such style covariates beside the plain ones;
this module fits the same kind of model to the battles of clo.evaluate.ratings (pure functions):

    logit P(a beats b) = θ_a − θ_b + γ · (s_a − s_b)

with ties counted as half a win (as the plain ratings count them; both_bad left out) and three covariates per
battle, each a normalised difference between the two answers:

    length     (len_a − len_b) / (len_a + len_b) in characters, then standardised over the battles (mean 0, sd 1)
    markdown   (m_a − m_b) / (m_a + m_b + 1), m = markdown elements (headings, list items, bold spans, code
               fences; `markdown_elements`), then standardised
    language   on_a − on_b ∈ {−1, 0, 1}, on = 1 when the answer is in the prompt's language (left as it is, so its
               coefficient reads directly: what being in the prompt's language against not is worth)

θ has the plain ratings' weak N(0, 2²) prior (clo.evaluate.ratings.PRIOR_SD); γ has none. A covariate that does
not vary over the battles is left out (its coefficient is not identified). Ratings are reported as the plain ones
are (base anchored at 1000, 400/ln 10 points per unit of log-odds), γ both in log-odds and in rating points, with
percentile intervals from resampling the battles. Checked against scikit-learn's logistic regression on the same
design (tests/test_ratings.py).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit

from clo.evaluate.ratings import BASE, PRIOR_SD

STYLE = ("length", "markdown", "language")
POINTS = 400.0 / math.log(10.0)  # rating points per unit of log-odds
MARKDOWN = re.compile(r"^\s{0,3}#{1,6}\s|^\s*(?:[-*+]|\d+[.)])\s|\*\*[^*\n]+\*\*|^\s*```", re.MULTILINE)


def markdown_elements(text: str | None) -> int:
    """How many markdown elements `text` has: headings, list items, bold spans and code fences."""
    return len(MARKDOWN.findall(text or ""))


def style_features(answer_a: pd.Series, answer_b: pd.Series, on_a: pd.Series, on_b: pd.Series) -> pd.DataFrame:
    """The covariates of each battle (columns STYLE, as the module docstring defines them), before standardising:
    `on_a` / `on_b` say whether each answer is in the prompt's language."""
    len_a, len_b = answer_a.fillna("").str.len().to_numpy(float), answer_b.fillna("").str.len().to_numpy(float)
    md_a = answer_a.map(markdown_elements).to_numpy(float)
    md_b = answer_b.map(markdown_elements).to_numpy(float)
    total = len_a + len_b
    return pd.DataFrame({"length": np.divide(len_a - len_b, total, out=np.zeros_like(total), where=total > 0),
                         "markdown": (md_a - md_b) / (md_a + md_b + 1.0),
                         "language": np.asarray(on_a, float) - np.asarray(on_b, float)})


def fit(i: np.ndarray, j: np.ndarray, y: np.ndarray, x: np.ndarray, n_variants: int,
        prior_sd: float | None = PRIOR_SD, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Maximum a posteriori θ [V] and γ [K] of logit P(i beats j) = θ_i − θ_j + x·γ from battles (i, j, y: 1 win of
    i, ½ tie, 0 loss; `weights`: how often each battle counts, for the bootstrap), θ ~ N(0, prior_sd²) (None: no
    prior; then θ is pinned by its mean being 0), γ flat."""
    w = np.ones(len(y)) if weights is None else np.asarray(weights, float)
    k = x.shape[1]
    ridge = 0.0 if prior_sd is None else 1.0 / prior_sd**2
    scale = max(w.sum(), 1.0)

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        theta, gamma = params[:n_variants], params[n_variants:]
        z = theta[i] - theta[j] + x @ gamma
        loss = (w * (np.logaddexp(0.0, -z) + (1.0 - y) * z)).sum() + 0.5 * ridge * (theta**2).sum()
        g = w * (expit(z) - y)
        grad_theta = np.bincount(i, g, n_variants) - np.bincount(j, g, n_variants) + ridge * theta
        if prior_sd is None:  # only differences are identified: hold the mean at 0
            loss += 0.5 * theta.sum() ** 2
            grad_theta = grad_theta + theta.sum()
        return float(loss / scale), np.concatenate([grad_theta, x.T @ g]) / scale

    result = minimize(loss_and_grad, np.zeros(n_variants + k), jac=True, method="L-BFGS-B",
                      options={"maxiter": 2000, "gtol": 1e-10, "ftol": 1e-15})
    return result.x[:n_variants], result.x[n_variants:]


def style_bradley_terry(battles: pd.DataFrame, on_a, on_b, anchor: str | None = None, anchor_rating: float = 1000.0,
                        n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0,
                        prior_sd: float | None = PRIOR_SD) -> dict[str, pd.DataFrame]:
    """The style-controlled ratings of rated `battles` (clo.evaluate.ratings.rated_battles: variant_a, variant_b,
    outcome, answer_a, answer_b), `on_a` / `on_b` whether each answer is in the prompt's language. both_bad votes
    are left out. Returns {"ratings": variant, rating, lower, upper, battles; "coefficients": feature, gamma
    (log-odds), points (rating points), lower, upper (points), used (False: it did not vary, left out)}."""
    keep = (battles["outcome"] != "both_bad").to_numpy()
    rows = battles[keep]
    names = sorted(set(rows["variant_a"]) | set(rows["variant_b"]))
    empty = {"ratings": pd.DataFrame(columns=["variant", "rating", "lower", "upper", "battles"]),
             "coefficients": pd.DataFrame(columns=["feature", "gamma", "points", "lower", "upper", "used"])}
    if len(names) < 2:
        return empty
    raw = style_features(rows["answer_a"], rows["answer_b"], np.asarray(on_a)[keep], np.asarray(on_b)[keep])
    used = [c for c in STYLE if raw[c].std(ddof=0) > 0]
    x = raw[used].copy()
    for c in ("length", "markdown"):
        if c in used:
            x[c] = (x[c] - x[c].mean()) / x[c].std(ddof=0)
    x = x.to_numpy(float)
    index = {n: k for k, n in enumerate(names)}
    i, j = rows["variant_a"].map(index).to_numpy(), rows["variant_b"].map(index).to_numpy()
    y = rows["outcome"].map({"a": 1.0, "tie": 0.5, "b": 0.0}).to_numpy(float)
    anchor = anchor if anchor in index else (BASE if BASE in index else None)

    def ratings_of(theta: np.ndarray) -> np.ndarray:
        origin = theta[..., [index[anchor]]] if anchor is not None else theta.mean(axis=-1, keepdims=True)
        return anchor_rating + POINTS * (theta - origin)

    theta, gamma = fit(i, j, y, x, len(names), prior_sd)
    rating = ratings_of(theta)
    lower = upper = np.full(len(names), np.nan)
    g_lower = g_upper = np.full(len(used), np.nan)
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        draws = [fit(i, j, y, x, len(names), prior_sd, weights=rng.multinomial(len(y), np.full(len(y), 1 / len(y))))
                 for _ in range(n_bootstrap)]
        alpha = 100 * (1 - confidence) / 2
        lower, upper = np.percentile(ratings_of(np.array([t for t, _ in draws])), [alpha, 100 - alpha], axis=0)
        lower, upper = np.minimum(lower, rating), np.maximum(upper, rating)
        if anchor is not None:
            lower[index[anchor]] = upper[index[anchor]] = np.nan
        g_lower, g_upper = np.percentile(np.array([g for _, g in draws]), [alpha, 100 - alpha], axis=0)
    battles_of = np.bincount(i, minlength=len(names)) + np.bincount(j, minlength=len(names))
    table = pd.DataFrame({"variant": names, "rating": rating, "lower": lower, "upper": upper,
                          "battles": battles_of.astype(int)}).sort_values("rating", ascending=False, kind="stable")
    coefficients = pd.DataFrame([{"feature": c, "gamma": float(gamma[used.index(c)]) if c in used else np.nan,
                                  "points": POINTS * float(gamma[used.index(c)]) if c in used else np.nan,
                                  "lower": POINTS * float(g_lower[used.index(c)]) if c in used else np.nan,
                                  "upper": POINTS * float(g_upper[used.index(c)]) if c in used else np.nan,
                                  "used": c in used} for c in STYLE])
    return {"ratings": table.reset_index(drop=True), "coefficients": coefficients}

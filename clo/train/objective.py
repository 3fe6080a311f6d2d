"""Loss functions of CLO and its baselines, as pure functions of log-probabilities.

Notation (Lee et al., ACL 2025): x_en, y_en an English instruction and answer; x_l, y_l their
translations into the target language l; π_θ the policy (base + LoRA), π_ref the base model.
Every summed log-probability below is log π(y | x) = Σ_t log π(y_t | x, y_<t) over the answer tokens.

The four cross-lingual sequences of one pair, named query_answer:

    tgt_tgt  y_l  | x_l     chosen   for the x_l query
    tgt_en   y_en | x_l     rejected for the x_l query
    en_en    y_en | x_en    chosen   for the x_en query
    en_tgt   y_l  | x_en    rejected for the x_en query

    L_CLO = λ·L_SFT + (1−λ)·L_CL
    L_CL  = ½ [ DPO(tgt_tgt ≻ tgt_en) + DPO(en_en ≻ en_tgt) ]     (each a mean over the batch)
    L_SFT = token-mean NLL of y_l | x_l

The trainer only computes log-probabilities and calls these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KEYS = ("tgt_tgt", "tgt_en", "en_en", "en_tgt")
DIRECTIONS = {"tgt": ("tgt_tgt", "tgt_en"), "en": ("en_en", "en_tgt")}  # direction -> (chosen, rejected)


def sequence_logps(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Summed log-probability of the labelled tokens of each row.

    logits: [B, T, V], position t predicts labels[:, t] (the caller has already shifted them).
    labels: [B, T], `ignore_index` on prompt and padding positions, which contribute exactly 0.
    Returns (sum_logps [B], n_tokens [B]). The log-softmax is taken one row at a time, so only one
    [T, V] float32 copy exists at once.
    """
    mask = labels != ignore_index
    index = labels.masked_fill(~mask, 0).unsqueeze(-1)
    rows = []
    for row_logits, row_index in zip(logits, index):
        row_logits = row_logits.float()
        rows.append(torch.gather(row_logits, -1, row_index).squeeze(-1) - torch.logsumexp(row_logits, dim=-1))
    token_logps = torch.stack(rows) * mask
    return token_logps.sum(-1), mask.sum(-1)


def token_mean_nll(sum_logps: Tensor, n_tokens: Tensor) -> Tensor:
    """Token-mean negative log-likelihood over a batch: −Σ_b sum_logps[b] / Σ_b n_tokens[b]. Shapes [B] → []."""
    return -sum_logps.sum() / n_tokens.sum().clamp(min=1)


def dpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor, reference_rejected: Tensor, beta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example DPO loss (Rafailov et al., 2023), all inputs [B] summed log-probabilities.

    r_c = β·(log π_θ(y_c|x) − log π_ref(y_c|x)),  r_r likewise,
    loss = −log σ(r_c − r_r).
    Returns (loss [B], chosen_rewards [B], rejected_rewards [B]); rewards are detached.
    """
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def clo_loss(
    policy: dict[str, Tensor],
    reference: dict[str, Tensor],
    target_nll: Tensor,
    beta: float = 0.1,
    lam: float = 0.5,
) -> tuple[Tensor, dict[str, float]]:
    """L_CLO = λ·L_SFT + (1−λ)·L_CL.

    policy, reference: {"tgt_tgt", "tgt_en", "en_en", "en_tgt"} → [B] summed log-probabilities of
        the answer given the query (see the module docstring), under π_θ and π_ref.
    target_nll: [] token-mean NLL of y_l | x_l under π_θ (this is L_SFT).
    L_CL is the mean over both directions and the batch of the DPO loss, with the target-language
    answer preferred for x_l and the English answer preferred for x_en.
    Returns (loss [], metrics): loss, l_sft, l_cl and for each direction d in (tgt, en):
    d/margin (mean r_c − r_r), d/accuracy (share with r_c > r_r), d/chosen_reward, d/rejected_reward.
    With λ = 0 this is the DPO baseline on cross-lingual pairs.
    """
    direction_losses, metrics = [], {}
    for name, (chosen, rejected) in DIRECTIONS.items():
        loss, r_c, r_r = dpo_loss(policy[chosen], policy[rejected], reference[chosen], reference[rejected], beta)
        direction_losses.append(loss.mean())
        metrics.update(_preference_metrics(name, r_c, r_r))
    l_cl = torch.stack(direction_losses).mean()
    loss = lam * target_nll + (1.0 - lam) * l_cl
    metrics.update(loss=loss.item(), l_sft=target_nll.item(), l_cl=l_cl.item())
    return loss, metrics


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x < 0, computed stably (Mächler, 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    policy_mean: dict[str, Tensor], target_nll: Tensor, weight: float = 0.1
) -> tuple[Tensor, dict[str, float]]:
    """ORPO (Hong et al., 2024) on the same cross-lingual pairs, without a reference model.

    policy_mean: the four keys → [B] *token-mean* log-probabilities (log P per token, < 0).
    log odds(y|x) = log P − log(1 − P) with P the token-mean probability;
    L_OR = mean over directions and batch of −log σ(log odds(chosen) − log odds(rejected));
    loss = L_SFT + weight·L_OR, L_SFT the target-language NLL as in CLO.
    Returns (loss [], metrics): loss, l_sft, l_or and d/margin, d/accuracy per direction (margin in log-odds).
    """
    terms, metrics = [], {}
    for name, (chosen, rejected) in DIRECTIONS.items():
        c, r = policy_mean[chosen], policy_mean[rejected]
        log_odds = (c - log1mexp(c)) - (r - log1mexp(r))
        terms.append(-F.logsigmoid(log_odds).mean())
        metrics.update(_preference_metrics(name, log_odds.detach(), torch.zeros_like(log_odds)))
    l_or = torch.stack(terms).mean()
    loss = target_nll + weight * l_or
    metrics.update(loss=loss.item(), l_sft=target_nll.item(), l_or=l_or.item())
    return loss, metrics


def _preference_metrics(direction: str, chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, float]:
    margin = chosen_rewards - rejected_rewards
    return {
        f"{direction}/margin": margin.mean().item(),
        f"{direction}/accuracy": (margin > 0).float().mean().item(),
        f"{direction}/chosen_reward": chosen_rewards.mean().item(),
        f"{direction}/rejected_reward": rejected_rewards.mean().item(),
    }

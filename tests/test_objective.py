"""clo.train.objective against values worked out by hand (no model involved)."""

import math

import pytest
import torch

from clo.train.objective import clo_loss, dpo_loss, log1mexp, orpo_loss, sequence_logps, token_mean_nll

# Two pairs. Rewards r = β·(policy − reference) with β = 0.1:
#   x_l query:  chosen y_l  r_c = [0.1, 0.0],  rejected y_en r_r = [-0.1, 0.1]  → margins [0.2, -0.1]
#   x_en query: chosen y_en r_c = [0.0, 0.1],  rejected y_l  r_r = [-0.1, 0.1]  → margins [0.1, 0.0]
POLICY = {"tgt_tgt": [-10.0, -12.0], "tgt_en": [-11.0, -9.0], "en_en": [-8.0, -7.0], "en_tgt": [-9.0, -6.0]}
REFERENCE = {"tgt_tgt": [-11.0, -12.0], "tgt_en": [-10.0, -10.0], "en_en": [-8.0, -8.0], "en_tgt": [-8.0, -7.0]}
# −log σ(m) = log(1 + e^(−m)) for m = 0.2, −0.1, 0.1, 0.0:
HAND = [0.5981388693815918, 0.744396660073571, 0.6443966600735709, 0.6931471805599453]
L_CL = sum(HAND) / 4  # 0.67001984...


def t(d):
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in d.items()}


def test_clo_loss_hand_computed():
    loss, m = clo_loss(t(POLICY), t(REFERENCE), torch.tensor(2.0, dtype=torch.float64), beta=0.1, lam=0.5)
    assert loss.item() == pytest.approx(0.5 * 2.0 + 0.5 * L_CL, abs=1e-9)
    assert loss.item() == pytest.approx(1.3350099212610849, abs=1e-9)
    assert m["l_cl"] == pytest.approx(L_CL, abs=1e-9)
    assert m["l_sft"] == pytest.approx(2.0)
    assert m["tgt/margin"] == pytest.approx((0.2 - 0.1) / 2)
    assert m["en/margin"] == pytest.approx((0.1 + 0.0) / 2)
    assert m["tgt/accuracy"] == pytest.approx(0.5)
    assert m["en/accuracy"] == pytest.approx(0.5)  # a zero margin is not a win
    assert m["tgt/chosen_reward"] == pytest.approx(0.05)
    assert m["en/rejected_reward"] == pytest.approx(0.0)


def test_lambda_extremes():
    nll = torch.tensor(3.5, dtype=torch.float64)
    sft_only, _ = clo_loss(t(POLICY), t(REFERENCE), nll, beta=0.1, lam=1.0)
    cl_only, _ = clo_loss(t(POLICY), t(REFERENCE), nll, beta=0.1, lam=0.0)
    assert sft_only.item() == pytest.approx(3.5)
    assert cl_only.item() == pytest.approx(L_CL, abs=1e-9)


def test_beta_scales_the_rewards():
    # β = 1: the margins become [2, -1] and [1, 0].
    _, m = clo_loss(t(POLICY), t(REFERENCE), torch.tensor(0.0, dtype=torch.float64), beta=1.0, lam=0.0)
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0)) + math.log1p(math.exp(-1.0)) + math.log(2)) / 4
    assert m["l_cl"] == pytest.approx(expected, abs=1e-9)
    assert m["l_cl"] == pytest.approx(0.6116496416598408, abs=1e-9)
    assert m["tgt/margin"] == pytest.approx(0.5)


def test_the_preferred_answer_depends_on_the_query_language():
    # Swapping which answer the policy favours for the x_en query must raise the loss:
    # for x_en the English answer y_en is the chosen one, y_l the rejected one.
    good = t(POLICY) | {"en_en": torch.tensor([-5.0, -5.0], dtype=torch.float64), "en_tgt": torch.tensor([-20.0, -20.0], dtype=torch.float64)}
    bad = t(POLICY) | {"en_en": torch.tensor([-20.0, -20.0], dtype=torch.float64), "en_tgt": torch.tensor([-5.0, -5.0], dtype=torch.float64)}
    nll = torch.tensor(0.0, dtype=torch.float64)
    assert clo_loss(good, t(REFERENCE), nll)[0] < clo_loss(bad, t(REFERENCE), nll)[0]


def test_gradients_flow_to_policy_only():
    policy = {k: v.clone().requires_grad_(True) for k, v in t(POLICY).items()}
    nll = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    loss, _ = clo_loss(policy, t(REFERENCE), nll, beta=0.1, lam=0.5)
    loss.backward()
    assert nll.grad.item() == pytest.approx(0.5)
    # d/d chosen of −log σ(β Δ) / 4 (mean over 2 directions × 2 rows) × (1 − λ) = −β σ(−m) / 8
    m = 0.2
    assert policy["tgt_tgt"].grad[0].item() == pytest.approx(-0.1 / (1 + math.exp(m)) / 8, abs=1e-12)
    assert policy["tgt_en"].grad[0].item() == pytest.approx(0.1 / (1 + math.exp(m)) / 8, abs=1e-12)


def test_dpo_loss_zero_margin_is_log2():
    x = torch.tensor([-3.0])
    loss, rc, rr = dpo_loss(x, x, x, x, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert rc.item() == rr.item() == 0.0


def test_sequence_logps_ignores_prompt_and_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 0]])
    sums, counts = sequence_logps(logits, labels)
    logp = torch.log_softmax(logits, -1)
    assert sums[0].item() == pytest.approx((logp[0, 2, 3] + logp[0, 3, 4]).item(), abs=1e-6)
    assert sums[1].item() == pytest.approx((logp[1, 1, 1] + logp[1, 2, 2] + logp[1, 3, 6] + logp[1, 4, 0]).item(), abs=1e-6)
    assert counts.tolist() == [2, 4]
    # changing logits at ignored positions changes nothing
    logits2 = logits.clone()
    logits2[0, 0] += 100
    logits2[0, 4] -= 50
    assert torch.equal(sequence_logps(logits2, labels)[0][0], sums[0])
    assert token_mean_nll(sums, counts).item() == pytest.approx(-(sums.sum() / 6).item())


def test_log1mexp_is_stable():
    x = torch.tensor([-1e-8, -0.1, -0.6931, -5.0, -50.0], dtype=torch.float64)
    expected = torch.log(1 - torch.exp(x.to(torch.float64)))
    assert torch.allclose(log1mexp(x)[1:], expected[1:], rtol=1e-9)
    assert torch.isfinite(log1mexp(x)).all()


def test_orpo_loss_hand_computed():
    # token-mean log P: chosen −0.5, rejected −1.0 in both directions
    mean = {"tgt_tgt": [-0.5], "tgt_en": [-1.0], "en_en": [-0.5], "en_tgt": [-1.0]}
    odds = lambda lp: lp - math.log(1 - math.exp(lp))  # noqa: E731
    ratio = odds(-0.5) - odds(-1.0)
    expected_or = math.log1p(math.exp(-ratio))
    loss, m = orpo_loss(t(mean), torch.tensor(2.0, dtype=torch.float64), weight=0.1)
    assert m["l_or"] == pytest.approx(expected_or, abs=1e-9)
    assert loss.item() == pytest.approx(2.0 + 0.1 * expected_or, abs=1e-9)
    assert m["tgt/accuracy"] == 1.0

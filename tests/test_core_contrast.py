"""Calibration and contrast math against closed forms."""

import math

import pytest
import torch

from debias_lm.core import batch_prior, calibrate, contrast


def test_diagonal_calibration_flips_the_answer():
    p, p_cf = torch.tensor([0.6, 0.4]), torch.tensor([0.8, 0.2])
    q = calibrate(p, p_cf, "diagonal")
    # q ∝ (0.6 / 0.8001, 0.4 / 0.2001)
    a, b = 0.6 / 0.8001, 0.4 / 0.2001
    torch.testing.assert_close(q, torch.tensor([a / (a + b), b / (a + b)], dtype=torch.float64))
    assert q.argmax().item() == 1 and p.argmax().item() == 0


def test_identity_calibration_closed_form():
    q = calibrate(torch.tensor([0.6, 0.4]), torch.tensor([0.8, 0.2]), "identity")
    torch.testing.assert_close(q, torch.tensor([0.0, 1.0], dtype=torch.float64))  # (-0.2, 0.2) clipped, renormalised
    q = calibrate(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.2, 0.6]), "identity")
    torch.testing.assert_close(q, torch.tensor([0.3 / 0.4, 0.1 / 0.4, 0.0], dtype=torch.float64))
    assert torch.equal(calibrate(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]), "identity"),
                       torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_batch_calibration_uses_mean_prior():
    p = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.8, 0.2]])
    prior = batch_prior(p)
    torch.testing.assert_close(prior, torch.tensor([0.8, 0.2], dtype=torch.float64))
    q = calibrate(p, mode="batch")
    row = torch.tensor([0.7 / 0.8001, 0.3 / 0.2001], dtype=torch.float64)
    torch.testing.assert_close(q[1], row / row.sum())
    assert q[1].argmax().item() == 1  # the below-average "yes" becomes a "no"


def test_calibration_renormalises_and_broadcasts():
    p = torch.tensor([[3.0, 1.0], [1.0, 1.0]])  # unnormalised scores are renormalised
    q = calibrate(p, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(q.sum(-1), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(q[0], torch.tensor([0.75, 0.25], dtype=torch.float64))


def test_calibration_bad_input():
    with pytest.raises(ValueError, match="mode="):
        calibrate(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]), "affine")
    with pytest.raises(ValueError, match="needs p_cf"):
        calibrate(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="labels"):
        calibrate(torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="negative"):
        calibrate(torch.tensor([-0.5, 1.5]), torch.tensor([0.5, 0.5]))


def test_contrast_by_hand():
    l_c = torch.tensor([[2.0, 1.0, 0.0, -5.0]])
    l_u = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    s = contrast(l_c, l_u, alpha=1.0, beta=0.1)
    # cutoff: log(0.1) + 2 = -0.3026 -> tokens 2 (0.0 >= -0.30: kept) and 3 (-5: cut)
    assert s[0, 0].item() == pytest.approx(2 * 2.0 - 1.0)
    assert s[0, 1].item() == pytest.approx(2 * 1.0 - 2.0)
    assert s[0, 2].item() == pytest.approx(0.0)
    assert s[0, 3].item() == float("-inf")
    # the plausibility rule in probability space: p_c(y) >= beta * max p_c
    pc = torch.softmax(l_c, -1)
    assert torch.equal(torch.isfinite(s), pc >= 0.1 * pc.max())


def test_contrast_alpha_zero_and_edge_cases():
    l_c = torch.randn(3, 50)
    l_u = torch.randn(3, 50)
    s0 = contrast(l_c, l_u, alpha=0.0, beta=1.0)  # beta=1 keeps only the argmax
    assert torch.equal(s0.argmax(-1), l_c.argmax(-1)) and torch.isfinite(s0).sum().item() == 3
    masked = l_c.clone()
    masked[:, 7] = float("-inf")
    assert torch.isneginf(contrast(masked, l_u, 1.0, 1e-9)[:, 7]).all()
    l_u_inf = l_u.clone()
    l_u_inf[:, l_c[0].argmax()] = float("-inf")
    assert not torch.isposinf(contrast(l_c, l_u_inf, 1.0, 0.1)).any()
    bf = contrast(l_c.bfloat16(), l_u.bfloat16(), 1.0, 0.1)
    assert bf.dtype == torch.float32
    for bad in [dict(alpha=-0.1), dict(alpha=float("nan")), dict(beta=0.0), dict(beta=1.5)]:
        with pytest.raises(ValueError):
            contrast(l_c, l_u, **{"alpha": 1.0, "beta": 0.1, **bad})
    assert math.isclose(contrast(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 2.0, 0.5)[0, 1].item(), -2.0)


# -- non-finite safety (issue 18 item 1) ------------------------------------------------------------------------
def _plausible(l_c, beta):
    return l_c >= math.log(beta) + l_c.amax(-1, keepdim=True)


def test_contrast_never_returns_nan_for_overflowing_alpha():
    """alpha = 1e38 overflows (1+α)·l_c − α·l_u to inf − inf = NaN in float32; the result must stay usable: no NaN,
    every row keeps a finite or +inf score, and only plausible tokens (p_c >= β·max p_c) can be chosen."""
    g = torch.Generator().manual_seed(0)
    l_c, l_u = torch.randn(6, 300, generator=g) * 5, torch.randn(6, 300, generator=g) * 5
    s, fell_back = contrast(l_c, l_u, alpha=1e38, beta=0.1, return_fallback=True)
    assert not torch.isnan(s).any()
    assert (s > float("-inf")).any(-1).all()
    chosen = s.argmax(-1)
    assert _plausible(l_c, 0.1)[torch.arange(6), chosen].all()
    assert fell_back.dtype == torch.bool and fell_back.shape == (6,)


def test_contrast_row_without_finite_score_falls_back_to_the_plain_cut():
    l_c = torch.tensor([[2.0, 1.0, 0.0, -5.0], [0.0, 1.0, 2.0, 3.0]])
    l_u = torch.tensor([[float("inf")] * 4, [0.0, 0.0, 0.0, 0.0]])  # row 0: every contrasted score is -inf
    s, fell_back = contrast(l_c, l_u, alpha=1.0, beta=0.1, return_fallback=True)
    assert fell_back.tolist() == [True, False]
    plain_cut = l_c[0].masked_fill(~_plausible(l_c, 0.1)[0], float("-inf"))
    assert torch.equal(s[0], plain_cut)
    assert torch.equal(s[1], contrast(l_c[1:], l_u[1:], 1.0, 0.1)[0])
    assert torch.equal(contrast(l_c, l_u, 1.0, 0.1), s)  # the plain call returns the same scores


def test_contrast_nan_inputs_do_not_propagate():
    l_c = torch.randn(3, 20)
    l_u = torch.randn(3, 20)
    l_c[0, 3] = float("nan")
    l_u[1, 5] = float("nan")  # a NaN counterfactual logit: the row's contrast is unusable, it falls back
    l_c[2, :] = float("nan")  # a broken model row: nothing to choose, stays all -inf, no NaN
    s, fell_back = contrast(l_c, l_u, 1.0, 0.1, return_fallback=True)
    assert not torch.isnan(s).any()
    assert fell_back.tolist() == [False, True, True]
    assert torch.isneginf(s[0, 3]) and torch.isneginf(s[2]).all()
    plain_cut = contrast(l_c[1:2], l_u[1:2], 0.0, 0.1)[0]
    assert torch.equal(s[1], plain_cut)


def test_contrast_per_row_alpha_beta_tensors_equal_per_row_calls():
    g = torch.Generator().manual_seed(1)
    l_c, l_u = torch.randn(4, 64, generator=g) * 3, torch.randn(4, 64, generator=g) * 3
    alpha = torch.tensor([0.0, 0.5, 2.0, 100.0])
    beta = torch.tensor([0.1, 0.01, 1.0, 0.3])
    s = contrast(l_c, l_u, alpha, beta)
    for i in range(4):
        want = contrast(l_c[i:i + 1], l_u[i:i + 1], float(alpha[i]), float(beta[i]))[0]
        torch.testing.assert_close(s[i], want, rtol=0, atol=0)


def test_hf_twin_rows_processor_falls_back_and_counts(caplog):
    """The HF path: a row whose counterfactual logits are unusable (NaN) is decoded plainly, counted and logged."""
    from debias_lm.hf.twin_rows import TwinRowContrastProcessor

    proc = TwinRowContrastProcessor(2, alpha=1.0, beta=0.1)
    scores = torch.randn(4, 30)
    scores[3] = float("nan")  # counterfactual row of prompt 1
    with caplog.at_level("WARNING", logger="debias_lm"):
        out = proc(torch.zeros(4, 1, dtype=torch.long), scores)
    assert proc.fallback_rows == 1 and "no finite contrasted score" in caplog.text
    tokens = out.argmax(-1)
    assert tokens[1] == tokens[3] == scores[1].argmax()  # plain choice, forced on both rows
    assert tokens[0] == contrast(scores[:1], scores[2:3], 1.0, 0.1).argmax()


# -- VCD's diffusion noise (the `noise` image-free variant) ----------------------------------------------------
def _vcd_closed_form(step: int) -> tuple[float, float]:
    """VCD's schedule in float64 plain Python: β_s = 1e-5 + (5e-3 − 1e-5)·σ(−6 + 12 s / 999), ᾱ_t = Π (1 − β_s)."""
    log_abar = 0.0
    for s in range(step + 1):
        z = -6.0 + 12.0 * s / 999
        beta = 1e-5 + (5e-3 - 1e-5) / (1.0 + math.exp(-z))
        log_abar += math.log1p(-beta)
    abar = math.exp(log_abar)
    return math.sqrt(abar), math.sqrt(1.0 - abar)


@pytest.mark.parametrize("step", [0, 500, 999])
def test_diffusion_noise_follows_vcds_sigmoid_schedule(step):
    from debias_lm.core.vision import diffusion_noise

    a, b = _vcd_closed_form(step)
    x = torch.linspace(-2.0, 2.0, 3 * 8 * 8, dtype=torch.float64).view(1, 3, 8, 8)
    got = diffusion_noise(x, step, generator=torch.Generator().manual_seed(7))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float32).double()
    torch.testing.assert_close(got, a * x + b * eps, rtol=1e-6, atol=1e-6)
    assert got.dtype == x.dtype


def test_vcd_schedule_landmarks():
    # VCD's default step 500 keeps most of the image (≈ 0.86·x + 0.51·ε); even step 999 keeps ≈ 0.29·x
    a500, b500 = _vcd_closed_form(500)
    assert a500 == pytest.approx(0.863, abs=1e-3) and b500 == pytest.approx(0.505, abs=1e-3)
    a999, b999 = _vcd_closed_form(999)
    assert a999 == pytest.approx(0.285, abs=1e-3) and b999 == pytest.approx(0.959, abs=1e-3)
    from debias_lm.core.vision import vcd_noise_coefficients

    for step in (0, 1, 250, 500, 998, 999):
        assert vcd_noise_coefficients(step) == pytest.approx(_vcd_closed_form(step), rel=1e-12)
    for bad in (-1, 1000, 2.5, True):
        with pytest.raises(ValueError, match="step="):
            vcd_noise_coefficients(bad)

"""The paired bootstrap against its definition: the exact resampling distribution enumerated by hand."""

import itertools
import math

import pytest

from debias_lm.errors import UserInputError
from debias_lm.metrics import mean_difference, paired_bootstrap, share_of_reduction


def _exact_quantile_atoms(values: list[float], q: float) -> tuple[float, float]:
    """Every resample of n prompts is one of n**n equally likely index tuples: the q-quantile lies on the atom
    where the empirical CDF crosses q. Returns (that atom, distance of q from the nearest CDF jump)."""
    values = sorted(values)
    m = len(values)
    k = math.ceil(q * m) - 1
    jumps = [0.0, 1.0] + [i / m for i in range(1, m) if values[i - 1] != values[i]]
    return values[k], min(abs(q - j) for j in jumps)


def test_interval_is_the_percentile_of_the_exact_paired_resampling_distribution():
    base = [0.9, 0.4, 0.7, 0.2]
    method = [0.5, 0.45, 0.3, 0.25]
    exact = []
    for idx in itertools.product(range(4), repeat=4):  # all 256 paired resamples
        exact.append(sum(base[i] for i in idx) / 4 - sum(method[i] for i in idx) / 4)
    res = paired_bootstrap(mean_difference, [base, method], n_boot=200_000, seed=1)
    for q, got in ((0.025, res["low"]), (0.975, res["high"])):
        atom, margin = _exact_quantile_atoms(exact, q)
        assert margin > 0.004  # q is far from a jump, so the sampled quantile must land on this atom
        assert got == pytest.approx(atom, abs=1e-9)
    assert res["estimate"] == pytest.approx(sum(base) / 4 - sum(method) / 4)
    assert res["n_dropped"] == 0 and res["n_prompts"] == 4


def test_pairing_cancels_prompt_difficulty():
    # the method lowers every prompt by exactly 0.1: paired, every resample's difference is 0.1 (an unpaired
    # bootstrap of the same data would give an interval wider than 0.5)
    base = [0.95, 0.05, 0.6, 0.3, 0.8, 0.1]
    method = [b - 0.1 for b in base]
    res = paired_bootstrap(mean_difference, [base, method], n_boot=2000)
    assert res["low"] == pytest.approx(0.1) and res["high"] == pytest.approx(0.1)


def test_share_of_reduction_is_the_ratio_of_the_two_reductions():
    base, method, ref = [0.6, 0.5, 0.4], [0.55, 0.45, 0.4], [0.4, 0.4, 0.3]
    res = paired_bootstrap(share_of_reduction, [base, method, ref], n_boot=500)
    assert res["estimate"] == pytest.approx((0.5 - 1.4 / 3) / (0.5 - 1.1 / 3))
    # a reference equal to the base has no reduction to share: every resample is undefined and counted
    res = paired_bootstrap(share_of_reduction, [base, method, base], n_boot=50)
    assert res["n_dropped"] == 50 and math.isnan(res["low"]) and math.isnan(res["high"])


def test_seeded_and_reproducible():
    a, b = [0.1, 0.9, 0.4, 0.3, 0.7], [0.2, 0.5, 0.1, 0.3, 0.6]
    r1 = paired_bootstrap(mean_difference, [a, b], n_boot=300, seed=7)
    assert r1 == paired_bootstrap(mean_difference, [a, b], n_boot=300, seed=7)
    assert r1 != paired_bootstrap(mean_difference, [a, b], n_boot=300, seed=8)


@pytest.mark.parametrize("arms, kw", [([[0.1, 0.2], [0.3]], {}), ([[], []], {}), ([], {}),
                                      ([[0.1], [0.2]], {"alpha": 0.0}), ([[0.1], [0.2]], {"n_boot": 0})])
def test_bad_input_is_refused(arms, kw):
    with pytest.raises(UserInputError):
        paired_bootstrap(mean_difference, arms, **kw)

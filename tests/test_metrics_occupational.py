"""Occupational metrics against values computed by hand."""

import math

import pytest

from debias_lm.metrics import (
    amplification_pp,
    mae_pp,
    occupational_metrics,
    parity_gap_pp,
    pearson_r,
    relative_reduction,
)

# three occupations: BLS 10%, 50%, 90% women; model p_female 0.30, 0.50, 0.95
P = [0.30, 0.50, 0.95]
Q = [10.0, 50.0, 90.0]


def test_mae_by_hand():
    # |30-10| + |50-50| + |95-90| = 20 + 0 + 5 = 25 -> 25 / 3
    assert mae_pp(P, Q) == pytest.approx(25 / 3)


def test_parity_gap_by_hand():
    # |30-50| + |50-50| + |95-50| = 20 + 0 + 45 = 65 -> 65 / 3
    assert parity_gap_pp(P, Q) == pytest.approx(65 / 3)


def test_amplification_by_hand():
    # sign(10-50)*(30-10) = -20 ; sign(0)*(0) = 0 ; sign(40)*(95-90) = +5  -> -15 / 3
    assert amplification_pp(P, Q) == pytest.approx(-5.0)
    # a model that exaggerates both majorities: 2% for the 10% job, 99% for the 90% job
    assert amplification_pp([0.02, 0.99], [10.0, 90.0]) == pytest.approx(((10 - 2) + (99 - 90)) / 2)


def test_pearson_by_hand():
    # x = (30, 50, 95), y = (10, 50, 90); means 58.333.., 50
    x, y = [30, 50, 95], [10, 50, 90]
    mx, my = sum(x) / 3, sum(y) / 3
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    vx = sum((a - mx) ** 2 for a in x)
    vy = sum((b - my) ** 2 for b in y)
    expected = cov / math.sqrt(vx * vy)
    assert pearson_r(P, Q) == pytest.approx(expected)
    assert 0.9 < expected < 1.0
    assert pearson_r([0.1, 0.9], [90.0, 10.0]) == pytest.approx(-1.0)


def test_nan_estimates_are_excluded_and_counted():
    m = occupational_metrics([0.30, float("nan"), 0.95], Q)
    assert m["n"] == 2 and m["n_unresolved"] == 1
    assert m["mae_pp"] == pytest.approx((20 + 5) / 2)


def test_relative_reduction():
    assert relative_reduction(20.0, 5.0) == pytest.approx(0.75)
    assert relative_reduction(10.0, 12.0) == pytest.approx(-0.2)
    assert math.isnan(relative_reduction(0.0, 1.0))


def test_bad_inputs():
    with pytest.raises(ValueError, match="p_female"):
        mae_pp([1.5], [10.0])
    with pytest.raises(ValueError, match="bls_women"):
        mae_pp([0.5], [150.0])
    with pytest.raises(ValueError, match="values"):
        mae_pp([0.5, 0.5], [10.0])

"""BD-rate (resilient_tx.eval.bdrate): exact cases, the interpolant, and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_tx.errors import InputError
from resilient_tx.eval.bdrate import CubicFit, Method, Pchip, bd_rate, pareto_front

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RATES = [0.05, 0.1, 0.2, 0.4, 0.8]
PSNRS = [24.0, 26.5, 29.0, 31.0, 33.5]


@st.composite
def curves(draw: st.DrawFn, min_points: int = 2) -> tuple[list[float], list[float]]:
    """A random RD curve: rate and quality both strictly rising."""
    n = draw(st.integers(min_points, 8))
    q_steps = draw(st.lists(st.floats(0.2, 5.0), min_size=n, max_size=n))
    r_steps = draw(st.lists(st.floats(1.05, 3.0), min_size=n, max_size=n))
    q0 = draw(st.floats(15.0, 35.0))
    r0 = draw(st.floats(0.01, 0.5))
    return ([r0 * math.prod(r_steps[:i]) for i in range(n)],
            [q0 + sum(q_steps[:i]) for i in range(n)])


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_identical_curves_give_zero(method: Method) -> None:
    res = bd_rate(RATES, PSNRS, RATES, PSNRS, method=method)
    assert res is not None and res.bd_rate == pytest.approx(0.0, abs=1e-12)
    assert (res.quality_lo, res.quality_hi) == (24.0, 33.5)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_half_the_rate_everywhere_is_minus_50_percent(method: Method) -> None:
    res = bd_rate(RATES, PSNRS, [r / 2 for r in RATES], PSNRS, method=method)
    assert res is not None and res.percent == pytest.approx(-50.0, abs=1e-9)


def test_non_overlapping_quality_ranges_give_none() -> None:
    assert bd_rate(RATES, PSNRS, RATES, [q + 20.0 for q in PSNRS]) is None
    # Touching at one point is no interval either.
    assert bd_rate(RATES[:2], PSNRS[:2], RATES[:2], [26.5, 27.0]) is None


def test_max_rate_below_both_curves_gives_none() -> None:
    assert bd_rate(RATES, PSNRS, RATES, PSNRS, max_rate=0.01) is None


def test_max_rate_caps_the_quality_interval_where_both_rates_fit() -> None:
    res = bd_rate(RATES, PSNRS, RATES, PSNRS, max_rate=0.2)
    assert res is not None and res.quality_hi == pytest.approx(29.0)
    assert res.ref_rate_hi == pytest.approx(0.2) and res.test_rate_hi == pytest.approx(0.2)


def test_log_linear_curves_match_the_closed_form() -> None:
    # log r = a + b q on both curves: the mean difference over [lo, hi] is exact.
    q = np.array([20.0, 24.0, 28.0, 32.0])
    qt = q + 2.0  # the test curve spans [22, 34]: the overlap is [22, 32]
    ref, test = np.exp(-4.0 + 0.1 * q), np.exp(-3.0 + 0.06 * qt)
    res = bd_rate(ref, q, test, qt)
    lo, hi = 22.0, 32.0
    expected = math.expm1(1.0 - 0.04 * (lo + hi) / 2)
    assert res is not None and res.bd_rate == pytest.approx(expected, rel=1e-12)


def test_bad_curves_are_refused() -> None:
    with pytest.raises(InputError):
        bd_rate([0.1], [30.0], RATES, PSNRS)  # one point
    with pytest.raises(InputError):
        bd_rate(RATES[:3], PSNRS[:3], RATES, PSNRS, method="cubic")  # cubic needs four
    with pytest.raises(InputError):
        bd_rate([0.1, 0.2, 0.15], [30.0, 31.0, 32.0], RATES, PSNRS)  # not monotone
    with pytest.raises(InputError):
        bd_rate([0.1, math.nan], [30.0, 31.0], RATES, PSNRS)
    with pytest.raises(InputError):
        bd_rate(RATES, PSNRS, RATES, PSNRS, method="linear")  # type: ignore[arg-type]


def test_pareto_front_drops_dominated_points() -> None:
    rates = [0.3, 0.1, 0.2, 0.25, 0.2]
    quals = [30.0, 25.0, 27.0, 26.0, 26.0]
    assert pareto_front(rates, quals) == [1, 2, 0]


def test_pchip_keeps_monotone_data_monotone_and_interpolates() -> None:
    x = np.array([0.0, 1.0, 1.5, 4.0, 4.2])
    y = np.array([0.0, 0.1, 3.0, 3.1, 8.0])
    f = Pchip(x, y)
    assert [f(float(v)) for v in x] == pytest.approx(list(y))
    grid = np.linspace(0.0, 4.2, 2001)
    assert (np.diff([f(float(v)) for v in grid]) >= -1e-12).all()


@FAST
@given(curves())
def test_pchip_integral_matches_quadrature(curve: tuple[list[float], list[float]]) -> None:
    rates, quals = curve
    f = Pchip(quals, np.log(rates))
    grid = np.linspace(quals[0], quals[-1], 4001)
    vals = np.array([f(float(v)) for v in grid])
    trapezoid = float(np.sum((vals[1:] + vals[:-1]) / 2 * np.diff(grid)))
    assert f.integral(quals[0], quals[-1]) == pytest.approx(trapezoid, rel=1e-5, abs=1e-6)


@FAST
@given(curves(), st.floats(0.1, 10.0), st.sampled_from([None, 0.05, 0.3, 2.0]))
def test_scaling_the_rate_by_c_gives_c_minus_1(curve: tuple[list[float], list[float]],
                                               c: float, max_rate: float | None) -> None:
    rates, quals = curve
    res = bd_rate(rates, quals, [c * r for r in rates], quals, max_rate=max_rate)
    if res is None:  # max_rate at or below one of the curves: nothing to compare
        assert max_rate is not None and max_rate <= max(rates[0], c * rates[0])
        return
    assert res.bd_rate == pytest.approx(c - 1.0, rel=1e-9, abs=1e-12)


@FAST
@given(curves(4), st.floats(0.1, 10.0))
def test_scaling_holds_for_the_cubic_fit_too(curve: tuple[list[float], list[float]],
                                             c: float) -> None:
    rates, quals = curve
    res = bd_rate(rates, quals, [c * r for r in rates], quals, method="cubic")
    assert res is not None and res.bd_rate == pytest.approx(c - 1.0, rel=1e-7, abs=1e-9)


@FAST
@given(curves(), curves())
def test_swapping_the_curves_inverts_the_rate_ratio(a: tuple[list[float], list[float]],
                                                    b: tuple[list[float], list[float]]) -> None:
    ab, ba = bd_rate(*a, *b), bd_rate(*b, *a)
    assert (ab is None) == (ba is None)
    if ab is not None and ba is not None:
        assert (1 + ab.bd_rate) * (1 + ba.bd_rate) == pytest.approx(1.0, rel=1e-9)


@FAST
@given(curves(), st.floats(0.1, 3.0))
def test_better_quality_at_the_same_rates_saves_bits(curve: tuple[list[float], list[float]],
                                                     shift: float) -> None:
    rates, quals = curve
    res = bd_rate(rates, quals, rates, [q + shift for q in quals])
    if res is not None:
        assert res.bd_rate < 0


def test_cubic_fit_reproduces_a_cubic() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0, 5.0])
    y = 1.0 - x + 0.5 * x**2 - 0.1 * x**3
    f = CubicFit(x, y)
    assert f.integral(0.0, 5.0) == pytest.approx(5.0 - 12.5 + 125 / 6 - 0.1 * 625 / 4)

"""Bjøntegaard delta rate (BD-rate): the average bit-rate difference between two RD curves.

Method (Bjøntegaard, VCEG-M33; with piecewise-cubic interpolation in place of the single
cubic fit, as later JCT-VC/JVET tools do):

* each curve is turned into log-rate as a function of quality (PSNR, MS-SSIM, ...);
* by default the function is a monotone piecewise cubic Hermite interpolant (PCHIP,
  Fritsch-Carlson slopes in the form scipy's ``PchipInterpolator`` uses), implemented
  here with numpy because scipy is not a dependency. ``method="cubic"`` instead fits one
  cubic polynomial by least squares, the original VCEG-M33 recipe; it needs four points
  and can wiggle, which is why it is not the default;
* both functions are integrated exactly over the quality interval the two curves share;
  the mean log-rate difference ``d`` over that interval gives ``BD-rate = exp(d) - 1``,
  the relative rate the test curve needs compared with the reference at equal quality
  (negative: the test codec needs fewer bits).

``max_rate`` narrows the interval further to the qualities at which *both* curves
(as interpolated) spend at most ``max_rate``, so a comparison can be confined to a low
bit-rate range. When the curves share no quality interval of positive width, the
functions return ``None`` rather than extrapolate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from resilient_tx.errors import InputError

Method = Literal["pchip", "cubic"]
#: A list of rates or qualities: any float sequence or a 1-D numpy array.
Values = Sequence[float] | np.ndarray
METHODS: tuple[Method, ...] = ("pchip", "cubic")
#: Grid used to find where an interpolant first exceeds ``max_rate`` before bisection.
_SCAN_POINTS = 513


@dataclass(frozen=True)
class BDResult:
    """A BD-rate and the interval it was measured over."""

    bd_rate: float  # fraction: -0.25 means the test curve needs 25 % fewer bits
    quality_lo: float
    quality_hi: float
    ref_rate_lo: float  # the reference curve's interpolated rate at quality_lo / _hi
    ref_rate_hi: float
    test_rate_lo: float
    test_rate_hi: float
    method: str

    @property
    def percent(self) -> float:
        return 100.0 * self.bd_rate


class _Curve(Protocol):
    """Log-rate as a function of quality on [lo, hi], with an exact integral."""

    lo: float
    hi: float

    def __call__(self, q: float) -> float: ...

    def integral(self, a: float, b: float) -> float: ...


def _edge_slope(h0: float, h1: float, d0: float, d1: float) -> float:
    """One-sided three-point end slope, clipped so the end segment stays monotone."""
    m = ((2.0 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
    if np.sign(m) != np.sign(d0):
        return 0.0
    if np.sign(d0) != np.sign(d1) and abs(m) > abs(3.0 * d0):
        return 3.0 * d0
    return float(m)


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson node slopes: weighted harmonic mean of the neighbouring secants,
    zero at a local extremum, so monotone data give a monotone interpolant."""
    h = np.diff(x)
    d = np.diff(y) / h
    if len(x) == 2:
        return np.array([d[0], d[0]])
    m = np.zeros(len(x))
    w1, w2 = 2.0 * h[1:] + h[:-1], h[1:] + 2.0 * h[:-1]
    same = np.sign(d[:-1]) * np.sign(d[1:]) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (w1 / d[:-1] + w2 / d[1:]) / (w1 + w2)
        m[1:-1] = np.where(same, 1.0 / inv, 0.0)
    m[0] = _edge_slope(h[0], h[1], d[0], d[1])
    m[-1] = _edge_slope(h[-1], h[-2], d[-1], d[-2])
    return m


class Pchip:
    """Monotone piecewise cubic Hermite interpolant through (x, y), x strictly increasing."""

    def __init__(self, x: Values, y: Values) -> None:
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        self.lo, self.hi = float(self.x[0]), float(self.x[-1])
        m = pchip_slopes(self.x, self.y)
        h = np.diff(self.x)
        d = np.diff(self.y) / h
        # Per segment, y = c0 + c1 t + c2 t^2 + c3 t^3 with t = q - x[k].
        self.c = np.stack([self.y[:-1], m[:-1], (3.0 * d - 2.0 * m[:-1] - m[1:]) / h,
                           (m[:-1] + m[1:] - 2.0 * d) / h**2])
        seg = self._segment_integral(np.arange(len(h)), h)
        self.cum = np.concatenate([[0.0], np.cumsum(seg)])

    def _segment_integral(self, k: np.ndarray | int, t: np.ndarray | float) -> np.ndarray:
        c0, c1, c2, c3 = self.c[:, k]
        return np.asarray(c0 * t + c1 * t**2 / 2 + c2 * t**3 / 3 + c3 * t**4 / 4)

    def _locate(self, q: float) -> int:
        return int(np.clip(np.searchsorted(self.x, q, side="right") - 1, 0, len(self.x) - 2))

    def __call__(self, q: float) -> float:
        k = self._locate(q)
        t = q - self.x[k]
        c0, c1, c2, c3 = self.c[:, k]
        return float(c0 + t * (c1 + t * (c2 + t * c3)))

    def _antiderivative(self, q: float) -> float:
        k = self._locate(q)
        return float(self.cum[k] + self._segment_integral(k, q - self.x[k]))

    def integral(self, a: float, b: float) -> float:
        """Exact integral from ``a`` to ``b`` (both inside [lo, hi])."""
        return self._antiderivative(b) - self._antiderivative(a)


class CubicFit:
    """Least-squares cubic polynomial through the points (VCEG-M33's original fit)."""

    def __init__(self, x: Values, y: Values) -> None:
        xs = np.asarray(x, dtype=np.float64)
        self.lo, self.hi = float(xs[0]), float(xs[-1])
        self.poly = np.polyfit(xs, np.asarray(y, dtype=np.float64), 3)
        self.anti = np.polyint(self.poly)

    def __call__(self, q: float) -> float:
        return float(np.polyval(self.poly, q))

    def integral(self, a: float, b: float) -> float:
        return float(np.polyval(self.anti, b) - np.polyval(self.anti, a))


def pareto_front(rates: Sequence[float], qualities: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (less or equal rate, more quality),
    in increasing rate. A BD curve must rise monotonically; dominated points would not."""
    order = sorted(range(len(rates)), key=lambda i: (rates[i], -qualities[i]))
    kept: list[int] = []
    for i in order:
        if not kept or qualities[i] > qualities[kept[-1]]:
            kept.append(i)
    return kept


def _check_curve(rates: Values, qualities: Values, method: Method,
                 name: str) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rates, dtype=np.float64)
    q = np.asarray(qualities, dtype=np.float64)
    need = 4 if method == "cubic" else 2
    if r.shape != q.shape or r.ndim != 1 or len(r) < need:
        raise InputError(f"{name} curve: need >= {need} (rate, quality) pairs for {method}")
    if not (np.isfinite(r).all() and np.isfinite(q).all() and (r > 0).all()):
        raise InputError(f"{name} curve: rates must be positive and all values finite")
    order = np.argsort(q)
    r, q = r[order], q[order]
    if not ((np.diff(q) > 0).all() and (np.diff(r) > 0).all()):
        raise InputError(f"{name} curve: rate must rise strictly with quality "
                         "(drop dominated points first, see pareto_front)")
    return np.log(r), q


def _fit(log_r: np.ndarray, q: np.ndarray, method: Method) -> _Curve:
    if method not in METHODS:
        raise InputError(f"unknown BD-rate method {method!r} (one of {', '.join(METHODS)})")
    return Pchip(q, log_r) if method == "pchip" else CubicFit(q, log_r)


def _quality_at_rate(curve: _Curve, log_max: float) -> float | None:
    """Largest q such that the curve stays at or below ``log_max`` on [lo, q];
    None if it starts above it."""
    if curve(curve.lo) > log_max:
        return None
    grid = np.linspace(curve.lo, curve.hi, _SCAN_POINTS)
    above = [g for g in grid if curve(float(g)) > log_max]
    if not above:
        return curve.hi
    hi = float(above[0])
    lo = float(grid[int(np.searchsorted(grid, hi)) - 1])
    for _ in range(60):  # bisection to float precision on a grid cell
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if curve(mid) <= log_max else (lo, mid)
    return lo


def _interval(ref: _Curve, test: _Curve, max_rate: float | None) -> tuple[float, float] | None:
    lo, hi = max(ref.lo, test.lo), min(ref.hi, test.hi)
    if max_rate is not None:
        if max_rate <= 0:
            raise InputError("max_rate must be positive")
        caps = [_quality_at_rate(c, math.log(max_rate)) for c in (ref, test)]
        if any(c is None for c in caps):
            return None
        hi = min([hi] + [c for c in caps if c is not None])
    return (lo, hi) if hi > lo else None


def bd_rate(ref_rates: Values, ref_qualities: Values, test_rates: Values,
            test_qualities: Values, *,
            max_rate: float | None = None, method: Method = "pchip") -> BDResult | None:
    """BD-rate of the test curve against the reference (anchor) curve.

    Rates are any positive rate unit (bpp here), qualities any measure that rises with
    quality. Each curve must rise strictly in both. Returns None when the two curves
    (within ``max_rate``, if given) share no quality interval of positive width.
    """
    ref_lr, ref_q = _check_curve(ref_rates, ref_qualities, method, "reference")
    test_lr, test_q = _check_curve(test_rates, test_qualities, method, "test")
    ref, test = _fit(ref_lr, ref_q, method), _fit(test_lr, test_q, method)
    span = _interval(ref, test, max_rate)
    if span is None:
        return None
    lo, hi = span
    diff = (test.integral(lo, hi) - ref.integral(lo, hi)) / (hi - lo)
    return BDResult(bd_rate=math.expm1(diff), quality_lo=lo, quality_hi=hi,
                    ref_rate_lo=math.exp(ref(lo)), ref_rate_hi=math.exp(ref(hi)),
                    test_rate_lo=math.exp(test(lo)), test_rate_hi=math.exp(test(hi)),
                    method=method)

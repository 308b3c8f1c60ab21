"""Statistics for hlrp-ladder, kept in one place and built on scipy.

Everything the ladder concludes from noisy numbers goes through here: the Student-t quantile, Welch's interval
for the difference of two means (compare), and the Theil-Sen line with its R² and residual RMS (memory model,
growth forecast). The package used to compute these by hand in several places, and one of them was wrong:
a Student-t table interpolated linearly between integer degrees of freedom is up to ~40 % too wide for
1 < df < 2 (df 1.5 gave 8.51 instead of 6.02). scipy computes the exact values and is well tested.

This module imports only the standard library, numpy and scipy.stats: nothing from hlrp_ladder, so any part
of the package can use it without an import cycle.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence



def _scipy_stats():
    """``scipy.stats`` (and numpy with it), imported on first use: half a second, which every command that
    merely reads a spec or a run (validate, status, report) would otherwise pay."""
    import scipy.stats

    return scipy.stats


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom (``df`` may be any real
    number > 0, or ``math.inf`` for the normal distribution).

    ``scipy.stats.t.ppf`` inverts the exact distribution function, so a fractional df, as Welch's formula
    gives, gets its exact quantile instead of one interpolated from a table."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must lie in (0, 1), got {p!r}")
    if not df > 0:  # also rejects NaN
        raise ValueError(f"t_quantile: df must be > 0, got {df!r}")
    return float(_scipy_stats().t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """A confidence interval for mean(b) - mean(a): ``low`` and ``high``, the Welch-Satterthwaite degrees of
    freedom ``df`` and the standard error ``se`` of the difference. ``se == 0`` means no noise was measured
    (every value on each side equal): the interval is then the single point of the difference, ``df`` is
    ``inf``, and it says nothing about how much the difference could vary."""

    low: float
    high: float
    df: float
    se: float


def welch_se_df(var_a: float, var_b: float, n_a: int, n_b: int) -> tuple[float, float]:
    """The standard error of mean(b) - mean(a) from each side's sample variance and size (n >= 2), and its
    Welch-Satterthwaite degrees of freedom (``inf`` when both variances are 0)."""
    va, vb = var_a / n_a, var_b / n_b  # squared standard errors of the means
    if va + vb == 0:
        return 0.0, math.inf
    return math.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Optional[Interval]:
    """The two-sided ``confidence`` interval of mean(b) - mean(a), each side with its own variance (Welch's
    t interval; degrees of freedom from the Welch-Satterthwaite formula, usually not an integer).

    Returns None when either side has fewer than 2 values (no variance can be measured). When both sides have
    zero variance, returns ``Interval(d, d, inf, 0.0)`` with ``d`` the difference of the means: callers must
    read ``se == 0`` as "no noise measured", not as a certain difference.

    Why not ``scipy.stats.ttest_ind(b, a, equal_var=False).confidence_interval()`` directly: it computes the
    variances with numpy, which for a constant side such as ``[0.1, 0.1, 0.1]`` gives a tiny non-zero variance
    (so ``se == 0`` is never seen) and emits a RuntimeWarning ("Precision loss ... catastrophic
    cancellation") whenever one side is constant, a common case for repeated runs. So the means and
    variances come from ``statistics`` (exact for constant data) and the quantile from scipy
    (:func:`t_quantile`); on ordinary data the result equals ttest_ind's interval (see the tests)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"welch_interval: confidence must lie in (0, 1), got {confidence!r}")
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not all(math.isfinite(v) for v in a + b):
        raise ValueError("welch_interval: values must be finite")
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    d = statistics.fmean(b) - statistics.fmean(a)
    se, df = welch_se_df(statistics.variance(a), statistics.variance(b), na, nb)
    if se == 0:
        return Interval(d, d, math.inf, 0.0)
    half = t_quantile(0.5 + confidence / 2, df) * se
    return Interval(d - half, d + half, df, se)


@dataclass(frozen=True)
class Line:
    """The straight line ``y = intercept + slope * x``."""

    slope: float
    intercept: float

    def predict(self, x: float) -> float:
        """y on the line at ``x``."""
        return self.intercept + self.slope * x


def theil_sen(points: Sequence[tuple[float, float]]) -> Optional[Line]:
    """The Theil-Sen line through ``(x, y)`` points: the slope is the median of the slopes of all pairs of
    points with different x, the intercept the median of ``y - slope * x``. One wild point moves neither
    (unlike least squares), which matters with the few points a ladder rung or a run's validations give.

    None with fewer than 2 distinct x. Points are used as given: a repeated point counts twice (remove
    duplicates first if they should count once). Computed with ``scipy.stats.theilslopes(y, x,
    method="joint")``: "joint" is the intercept median(y - slope * x); scipy's default ("separate") would be
    median(y) - slope * median(x), a different line."""
    pts = [(float(x), float(y)) for x, y in points]
    if len({x for x, _ in pts}) < 2:
        return None
    import numpy as np  # beside scipy, on first use (see _scipy_stats)

    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    res = _scipy_stats().theilslopes(y, x, method="joint")
    return Line(float(res.slope), float(res.intercept))


def _residuals(points: Sequence[tuple[float, float]], line: Line) -> list[float]:
    return [float(y) - line.predict(float(x)) for x, y in points]


def r_squared(points: Sequence[tuple[float, float]], line: Line) -> Optional[float]:
    """The share of the variance of y that ``line`` explains: ``1 - SS_res / SS_tot``, clipped at 0 (a robust
    line can fit worse than the mean; 0 then means "explains nothing"). None when y does not vary
    (``SS_tot == 0``, including no points), where the share is undefined.

    Written out rather than taken from scipy: ``scipy.stats.linregress`` reports the R² of the least-squares
    line, not of a given (Theil-Sen) line."""
    ys = [float(y) for _, y in points]
    if not ys:
        return None
    mean = statistics.fmean(ys)
    total = sum((y - mean) ** 2 for y in ys)
    if total == 0:
        return None
    return max(0.0, 1.0 - sum(r * r for r in _residuals(points, line)) / total)


def residual_rms(points: Sequence[tuple[float, float]], line: Line) -> float:
    """The root mean square of the residuals ``y - line(x)`` (divided by n, not n - 2): the typical distance
    of a point from ``line``, in the units of y. Raises ValueError without points. Elementary arithmetic;
    scipy has no function for the residuals of a given line."""
    residuals = _residuals(points, line)
    if not residuals:
        raise ValueError("residual_rms: no points")
    return math.sqrt(sum(r * r for r in residuals) / len(residuals))

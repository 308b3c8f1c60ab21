"""hlrp_ladder.search.stats against values known independently of it: published t tables, closed forms of the
t distribution, numerical integration of the t density (standard library only), and small examples worked out
by hand in the comments. Never against scipy called the way the module calls it."""
import dataclasses
import math
import statistics
import warnings

import pytest

from hlrp_ladder.search.stats import Interval, Line, r_squared, residual_rms, t_quantile, theil_sen, welch_interval


# --- helpers independent of scipy ------------------------------------------------------------------------------

def t_pdf(u: float, df: float) -> float:
    """Student's t density, from its definition."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return c * (1 + u * u / df) ** (-(df + 1) / 2)


def t_cdf(t: float, df: float, n: int = 4000) -> float:
    """P(T <= t) for t >= 0: 1/2 plus the integral of the density over [0, t] (Simpson's rule)."""
    h = t / n
    s = t_pdf(0.0, df) + t_pdf(t, df) + sum((4 if i % 2 else 2) * t_pdf(i * h, df) for i in range(1, n))
    return 0.5 + s * h / 3


def cauchy_q(q: float) -> float:
    """t quantile, df = 1 (the Cauchy distribution): tan(pi (q - 1/2))."""
    return math.tan(math.pi * (q - 0.5))


def t2_q(q: float) -> float:
    """t quantile, df = 2: (2q - 1) / sqrt(2 q (1 - q))."""
    return (2 * q - 1) / math.sqrt(2 * q * (1 - q))


def approx(x, rel=1e-12, abs=1e-12):
    return pytest.approx(x, rel=rel, abs=abs)


# --- t_quantile --------------------------------------------------------------------------------------------------

@pytest.mark.pure
@pytest.mark.parametrize("df, table", [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042),
                                       (10**7, 1.960), (math.inf, 1.960)])
def test_t_quantile_matches_the_published_table(df, table):
    # Two-sided 95 % critical values t_{0.975, df} as printed in every t table (e.g. NIST/SEMATECH e-Handbook,
    # table 1.3.6.7.2); the last rows are the normal z_{0.975} = 1.960.
    assert round(t_quantile(0.975, df), 3) == table


@pytest.mark.pure
def test_t_quantile_with_infinite_df_is_the_normal_quantile():
    # statistics.NormalDist is the standard library's own inverse normal CDF.
    for q in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(q, math.inf) == approx(statistics.NormalDist().inv_cdf(q), rel=1e-9)


@pytest.mark.pure
@pytest.mark.parametrize("q", [0.025, 0.1, 0.3, 0.5, 0.75, 0.9, 0.95, 0.975, 0.995])
def test_t_quantile_closed_forms_for_df_1_and_2(q):
    assert t_quantile(q, 1) == approx(cauchy_q(q), rel=1e-9, abs=1e-12)
    assert t_quantile(q, 2) == approx(t2_q(q), rel=1e-9, abs=1e-12)


@pytest.mark.pure
@pytest.mark.parametrize("df", [1.2, 1.5, 1.8, 2.5, 50 / 17, 7.3])
def test_t_quantile_non_integer_df_inverts_the_integrated_density(df):
    # The t density integrated numerically up to the returned quantile gives back 0.975.
    assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-9)


@pytest.mark.pure
def test_t_quantile_df_one_and_a_half():
    # Bisection on t_cdf above (Simpson, 20000 steps) puts t_{0.975, 1.5} at 6.016663. The old table
    # interpolated linearly between df 1 and 2 gave (12.706 + 4.303) / 2 = 8.505, 41 % too wide.
    assert t_quantile(0.975, 1.5) == pytest.approx(6.016663, abs=1e-6)


@pytest.mark.pure
def test_t_quantile_is_symmetric_and_rejects_bad_arguments():
    for df in (1, 1.5, 4, 40):
        assert t_quantile(0.025, df) == approx(-t_quantile(0.975, df), rel=1e-9)
    assert t_quantile(0.5, 3.3) == approx(0.0)
    for p, df in ((0.0, 3), (1.0, 3), (-0.1, 3), (0.975, 0), (0.975, -1), (0.975, math.nan)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


# --- welch_interval ---------------------------------------------------------------------------------------------

@pytest.mark.pure
def test_welch_equal_n_and_variance_df_2():
    # a = [1, 3]: mean 2, variance ((1-2)^2 + (3-2)^2) / 1 = 2;  b = [6, 8]: mean 7, variance 2.
    # va = 2/2 = 1, vb = 1, se = sqrt(2).  df = (1 + 1)^2 / (1^2/1 + 1^2/1) = 2 = 2 (n - 1).
    # t_{0.975, 2} = (2q - 1) / sqrt(2q(1 - q)) = 0.95 / sqrt(0.04875) = 4.302653.
    # d = 7 - 2 = 5, half = 4.302653 * 1.414214 = 6.084886: [-1.084886, 11.084886].
    iv = welch_interval([1, 3], [6, 8])
    half = t2_q(0.975) * math.sqrt(2)
    assert iv.df == approx(2.0)
    assert iv.se == approx(math.sqrt(2))
    assert iv.low == approx(5 - half) and iv.high == approx(5 + half)
    assert (round(iv.low, 4), round(iv.high, 4)) == (-1.0849, 11.0849)


@pytest.mark.pure
def test_welch_equal_n_and_variance_df_2n_minus_2_table():
    # a = [1, 2, 3, 4], b = [11, 12, 13, 14]: both variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, n = 4.
    # va = vb = 5/12, se = sqrt(5/6) = 0.912871, df = (5/6)^2 / (2 (5/12)^2 / 3) = 6 = 2 (4 - 1).
    # t_{0.975, 6} = 2.447 (table), half = 2.447 * 0.912871 = 2.2338, d = 10: [7.766, 12.234].
    iv = welch_interval([1, 2, 3, 4], [11, 12, 13, 14])
    assert iv.df == approx(6.0)
    assert iv.se == approx(math.sqrt(5 / 6))
    assert round((iv.high - iv.low) / 2 / iv.se, 3) == 2.447
    assert (round(iv.low, 3), round(iv.high, 3)) == (7.766, 12.234)


@pytest.mark.pure
def test_welch_unequal_variances_fractional_df():
    # a = [1, 2, 3]: mean 2, variance (1 + 0 + 1) / 2 = 1;  b = [4, 6, 8]: mean 6, variance (4 + 0 + 4) / 2 = 4.
    # va = 1/3, vb = 4/3, se = sqrt(5/3) = 1.290994.
    # df = (5/3)^2 / ((1/3)^2 / 2 + (4/3)^2 / 2) = (25/9) / (17/18) = 50/17 = 2.941176.
    # t_{0.975, 50/17} = 3.218759 (bisection on the integrated density), half = 4.155400: [-0.155400, 8.155400].
    iv = welch_interval([1, 2, 3], [4, 6, 8])
    assert iv.df == approx(50 / 17)
    assert iv.se == approx(math.sqrt(5 / 3))
    t = (iv.high - iv.low) / 2 / iv.se
    assert t_cdf(t, 50 / 17) == pytest.approx(0.975, abs=1e-9)
    assert (iv.low + iv.high) / 2 == approx(4.0)
    assert (round(iv.low, 4), round(iv.high, 4)) == (-0.1554, 8.1554)


@pytest.mark.pure
def test_welch_one_constant_side_df_1_and_no_warning():
    # a = [5, 5]: variance 0;  b = [1, 3]: mean 2, variance 2, vb = 2/2 = 1.  se = 1, df = 1^2 / (0 + 1^2/1) = 1.
    # t_{0.975, 1} = tan(0.475 pi) = 12.706205;  d = 2 - 5 = -3: [-15.706205, 9.706205].
    # scipy's ttest_ind warns ("catastrophic cancellation") on a constant side; this must not.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iv = welch_interval([5, 5], [1, 3])
        welch_interval([0.1, 0.1, 0.1], [1.0, 2.0, 4.0])
    assert iv.df == approx(1.0) and iv.se == approx(1.0)
    assert iv.low == approx(-3 - cauchy_q(0.975)) and iv.high == approx(-3 + cauchy_q(0.975))


@pytest.mark.pure
def test_welch_other_confidence():
    # Same data as the df = 2 case, 90 %: t_{0.95, 2} = 0.9 / sqrt(2 * 0.95 * 0.05) = 2.919986 (table: 2.920).
    iv = welch_interval([1, 3], [6, 8], confidence=0.90)
    assert round((iv.high - iv.low) / 2 / iv.se, 3) == 2.920
    assert iv.high == approx(5 + t2_q(0.95) * math.sqrt(2))
    with pytest.raises(ValueError):
        welch_interval([1, 3], [6, 8], confidence=1.0)


@pytest.mark.pure
def test_welch_zero_variance_both_sides():
    # No noise measured: the interval is the point d, se 0, df inf. [0.1]*3 has a tiny non-zero numpy variance
    # (3e-34), which must still count as zero.
    assert welch_interval([4, 4, 4], [1, 1]) == Interval(-3.0, -3.0, math.inf, 0.0)
    iv = welch_interval([0.1, 0.1, 0.1], [0.2, 0.2, 0.2])
    assert iv.se == 0.0 and iv.df == math.inf
    assert iv.low == iv.high == approx(0.1)


@pytest.mark.pure
def test_welch_needs_two_values_a_side():
    assert welch_interval([1.0], [1.0, 2.0, 3.0]) is None
    assert welch_interval([1.0, 2.0, 3.0], [2.0]) is None
    assert welch_interval([], [1.0, 2.0]) is None
    assert welch_interval([], []) is None
    with pytest.raises(ValueError):
        welch_interval([1.0, math.nan], [1.0, 2.0])


@pytest.mark.pure
def test_welch_agrees_with_scipys_own_welch_test():
    # A cross-check through another route: ttest_ind computes its own moments, df and interval.
    import random

    from scipy.stats import ttest_ind

    rng = random.Random(7)
    for _ in range(20):
        a = [rng.gauss(10, 1) for _ in range(rng.randint(2, 8))]
        b = [rng.gauss(11, 3) for _ in range(rng.randint(2, 8))]
        res = ttest_ind(b, a, equal_var=False)
        ci = res.confidence_interval(0.95)
        iv = welch_interval(a, b)
        assert iv.df == pytest.approx(float(res.df), rel=1e-9)
        assert (iv.low, iv.high) == (pytest.approx(float(ci.low), rel=1e-9), pytest.approx(float(ci.high), rel=1e-9))


# --- theil_sen ----------------------------------------------------------------------------------------------------

@pytest.mark.pure
def test_theil_sen_exact_line():
    pts = [(x, 3 * x + 2) for x in (0, 1, 2, 5, 9)]
    assert theil_sen(pts) == Line(3.0, 2.0)
    assert theil_sen([(1, 5), (2, 8)]) == Line(3.0, 2.0)


@pytest.mark.pure
def test_theil_sen_ignores_one_wild_point():
    # y = 3x + 2 at x = 0..3, and (4, 100) instead of (4, 14).
    # Pairwise slopes: the 6 pairs among the first four are 3; with (4, 100): 98/4 = 24.5, 95/3 = 31.67,
    # 92/2 = 46, 89/1 = 89. Sorted: 3 3 3 3 3 3 24.5 31.67 46 89; median (5th + 6th) / 2 = 3.
    # Intercept: median of y - 3x = 2 2 2 2 88 -> 2. (Least squares: slope 19.6.)
    assert theil_sen([(0, 2), (1, 5), (2, 8), (3, 11), (4, 100)]) == Line(3.0, 2.0)


@pytest.mark.pure
def test_theil_sen_noisy_points_joint_intercept():
    # (0,0) (1,2) (2,3) (3,7) (4,8). Pairwise slopes: 0-1 2, 0-2 1.5, 0-3 7/3, 0-4 2, 1-2 1, 1-3 2.5, 1-4 2,
    # 2-3 4, 2-4 2.5, 3-4 1. Sorted: 1 1 1.5 2 2 2 2.33 2.5 2.5 4; median (2 + 2) / 2 = 2.
    # Intercept median(y - 2x) = median(0, 0, -1, 1, 0) = 0. (scipy's default "separate" intercept,
    # median(y) - 2 median(x) = 3 - 4 = -1, would differ; least squares gives slope 21/10 = 2.1.)
    assert theil_sen([(0, 0), (1, 2), (2, 3), (3, 7), (4, 8)]) == Line(2.0, 0.0)


@pytest.mark.pure
def test_theil_sen_repeated_x_uses_pairs_with_different_x():
    # (0,0) (0,2) (1,3) (1,5): slopes of the pairs across x = 0 and 1: 3, 5, 1, 3; median (3 + 3) / 2 = 3.
    # Intercept median(y - 3x) = median(0, 2, 0, 2) = 1.
    assert theil_sen([(0, 0), (0, 2), (1, 3), (1, 5)]) == Line(3.0, 1.0)


@pytest.mark.pure
def test_theil_sen_needs_two_distinct_x():
    assert theil_sen([]) is None
    assert theil_sen([(3, 3)]) is None
    assert theil_sen([(1, 2), (1, 5), (1, 9)]) is None


@pytest.mark.pure
def test_line_is_frozen_and_predicts():
    line = Line(3.0, 2.0)
    assert line.predict(4) == 14.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        line.slope = 1.0  # type: ignore[misc]


# --- r_squared and residual_rms ----------------------------------------------------------------------------------

NOISY = [(0, 0), (1, 2), (2, 3), (3, 7), (4, 8)]


@pytest.mark.pure
def test_r_squared_and_rms_by_hand():
    # Line y = 2x through NOISY: residuals 0, 0, -1, 1, 0, SS_res = 2. Mean y = 20/5 = 4,
    # SS_tot = 16 + 4 + 1 + 9 + 16 = 46. R^2 = 1 - 2/46 = 22/23 = 0.956522. RMS = sqrt(2/5) = 0.632456.
    line = Line(2.0, 0.0)
    assert r_squared(NOISY, line) == approx(22 / 23)
    assert residual_rms(NOISY, line) == approx(math.sqrt(2 / 5))


@pytest.mark.pure
def test_r_squared_perfect_fit_and_clipping():
    pts = [(x, 3 * x + 2) for x in range(5)]
    assert r_squared(pts, Line(3.0, 2.0)) == 1.0
    assert residual_rms(pts, Line(3.0, 2.0)) == 0.0
    # y = x at x = 0, 1, 2 against y = -5x: residuals 0, 6, 12, SS_res = 180 > SS_tot = 2 -> 1 - 90 -> 0.
    assert r_squared([(0, 0), (1, 1), (2, 2)], Line(-5.0, 0.0)) == 0.0


@pytest.mark.pure
def test_r_squared_undefined_for_constant_y():
    assert r_squared([(0, 5), (1, 5), (2, 5)], Line(0.0, 5.0)) is None
    assert r_squared([(0, 5), (1, 5), (2, 5)], Line(1.0, 0.0)) is None
    assert r_squared([], Line(1.0, 0.0)) is None
    # RMS is still defined: residuals of y = x against 5, 5, 5 are 5, 4, 3 -> sqrt(50/3).
    assert residual_rms([(0, 5), (1, 5), (2, 5)], Line(1.0, 0.0)) == approx(math.sqrt(50 / 3))
    with pytest.raises(ValueError):
        residual_rms([], Line(1.0, 0.0))

"""The growth fit on synthetic series: pure, no processes."""
import random
import statistics

import pytest

from hlrp_ladder.forecast import MIB, assess, fit_growth
from hlrp_ladder.sizes import gib
from tests.records import GIB, rec


def series(values_mib, every=50):
    return [(every * (i + 1), int(v * MIB)) for i, v in enumerate(values_mib)]


def test_flat_with_noise_is_a_plateau():
    fit = fit_growth(series([1000, 1003, 998, 1002, 999, 1001]), 50)
    assert fit.kind == "plateau" and fit.slope_per_cycle == 0


def test_linear_growth_is_found_with_its_slope():
    fit = fit_growth(series([1000 + 41 * i + (-1) ** i * 3 for i in range(6)]), 50)
    assert fit.kind == "growth"
    assert fit.slope_per_cycle / MIB == pytest.approx(41, rel=0.1)
    assert fit.r2 > 0.99


def test_a_cycle_that_swings_high_and_low_is_a_plateau():
    # measured on the bundled trainer at bs=20: charged memory at validation ends 821, 1103, 844, 1113 MiB
    assert fit_growth(series([821, 1103, 844, 1113]), 50).kind == "plateau"


def test_one_outlier_does_not_make_growth():
    assert fit_growth(series([900, 1000, 1001, 999, 1300, 1000, 1002]), 50).kind == "plateau"


def test_warmup_cycles_where_buffers_fill_are_left_out():
    filling = series([400, 600, 800, 1000, 1001, 1002, 1001, 1002])
    assert fit_growth(filling, 50, warmup=0).kind == "growth"   # three cycles of filling look like growth ...
    assert fit_growth(filling, 50, warmup=3).kind == "plateau"  # ... until they are left out
    # one filling cycle alone does not fool the median of pairwise slopes even with no warm-up
    assert fit_growth(series([600, 1000, 1002, 1001, 1003]), 50, warmup=0).kind == "plateau"


def test_too_few_points():
    assert fit_growth(series([1000]), 50).kind == "insufficient"


@pytest.mark.parametrize("points,noise_mib,max_false,min_detect", [
    (8, 5, 0.01, 0.99), (8, 20, 0.01, 0.90), (4, 5, 0.01, 0.80), (4, 20, 0.05, 0.40),
])
def test_false_growth_and_detection_rates_on_noisy_series(points, noise_mib, max_false, min_detect):
    """A false "growth" rejects a good batch size, so flat noise must almost never pass; a real 30 MiB/cycle
    growth must be found, less surely with only 4 validations (3 after the warm-up)."""
    rnd = random.Random(1234)
    trials, false, found, slopes = 1000, 0, 0, []
    for _ in range(trials):
        flat = [1000 + rnd.gauss(0, noise_mib) for _ in range(points)]
        false += fit_growth(series(flat), 50).kind != "plateau"
        fit = fit_growth(series([1000 + 30 * i + rnd.gauss(0, noise_mib) for i in range(points)]), 50)
        if fit.kind == "growth":
            found += 1
            slopes.append(fit.slope_per_cycle / MIB)
    assert false / trials <= max_false
    assert found / trials >= min_detect
    if points >= 8:  # with few noisy points only the steep draws pass: their slopes are biased up
        assert 25 < statistics.median(slopes) < 35


def test_assess_extrapolates_to_the_long_run_and_says_why():
    stress = rec(24, peak_gib=1.2, phase="stress", cap_gib=28,
                 vals=[(50, 1.0), (100, 1.0 + 41 / 1024), (150, 1.0 + 82 / 1024), (200, 1.0 + 123 / 1024)])
    f = assess(stress, cycle_steps=50, warmup=1, long_run_steps=32400, long_run_interval=50,
               limit_bytes=24 * GIB, limit_name="cap", headroom_bytes=0)
    assert f.kind == "growth" and f.slope_mib_per_cycle == pytest.approx(41, abs=0.01)
    assert f.long_run_cycles == 648
    # 1.2 GiB now + 41 MiB x (648 - 4) cycles still to come
    assert f.predicted_peak_bytes == int(1.2 * GIB + 41 * MIB * 644)
    assert f.fits is False
    assert f.reason == f"+41 MiB per validation -> {gib(f.predicted_peak_bytes)} after 648 cycles > the 24.00 GiB cap"
    flat = rec(24, peak_gib=1.2, phase="stress", cap_gib=28, vals=[(50, 1.0), (100, 1.0), (150, 1.0), (200, 1.0)])
    g = assess(flat, cycle_steps=50, warmup=1, long_run_steps=32400, long_run_interval=50,
               limit_bytes=28 * GIB, limit_name="cap", headroom_bytes=2 * GIB)
    assert g.kind == "plateau" and g.fits is True and g.predicted_peak_bytes == int(1.2 * GIB)
    assert g.reason.endswith("after 648 cycles <= the 28.00 GiB cap less 2.00 GiB headroom")

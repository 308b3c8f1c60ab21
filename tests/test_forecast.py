"""The growth fit on synthetic series: pure, no processes."""
import random
import statistics

import pytest

from hlrp_ladder.search.forecast import MIB, assess, fit_growth
from hlrp_ladder.util.sizes import gib
from tests.handmade import GIB, rec

pytestmark = pytest.mark.pure


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


def test_page_cache_written_every_validation_is_no_leak():
    # a trainer that saves a checkpoint each validation: the charge climbs 60 MiB a cycle, the working set not
    vals = [(50 * (i + 1), 1.0 + 60 * i / 1024) for i in range(6)]
    cached = rec(8, peak_gib=1.3, phase="stress", cap_gib=1.5, vals=vals, ws_gib=0.9, ws_vals=[0.9] * 6)
    f = assess(cached, cycle_steps=50, warmup=1, long_run_steps=32400, long_run_interval=50,
               limit_bytes=int(1.5 * GIB), limit_name="cap", headroom_bytes=32 * MIB)
    assert (f.domain, f.kind, f.fits, f.predicted_peak_bytes) == ("working set", "plateau", True, int(0.9 * GIB))
    # read as the charge (a record without the working set), the same probe is a leak that will not fit
    blind = rec(8, peak_gib=1.3, phase="stress", cap_gib=1.5, vals=vals)
    g = assess(blind, cycle_steps=50, warmup=1, long_run_steps=32400, long_run_interval=50,
               limit_bytes=int(1.5 * GIB), limit_name="cap", headroom_bytes=32 * MIB)
    assert (g.domain, g.kind, g.fits) == ("cgroup", "growth", False)
    # a validation end without a working-set reading: the whole forecast falls back to the charge
    partial = rec(8, peak_gib=1.3, phase="stress", cap_gib=1.5, vals=vals, ws_gib=0.9, ws_vals=[0.9] * 6)
    partial.metrics.val_points[3].working_set_bytes = None
    k = assess(partial, cycle_steps=50, warmup=1, long_run_steps=32400, long_run_interval=50,
               limit_bytes=int(1.5 * GIB), limit_name="cap", headroom_bytes=32 * MIB)
    assert k.domain == "cgroup" and k.points_used == 5


# ---- two models: growth per validation and growth per step --------------------------------------------------------
def _stress_with(growth_per_val_mib: float, every: int = 50, points: int = 8):
    vals = [(every * (i + 1), 1.0 + growth_per_val_mib * i / 1024) for i in range(points)]
    return rec(8, peak_gib=vals[-1][1], phase="stress", cap_gib=28, vals=vals)


@pytest.mark.parametrize("leak", ["per step", "per validation"])
def test_long_run_validating_less_often_than_stress_is_judged_by_the_worse_model(leak):
    # stress validates every 50 steps and sees +41 MiB per validation (0.82 MiB/step); the long run validates every
    # 500 steps for 50000 steps: 100 validations. A per-step leak grows 0.82 x 50000 = ~40 GiB; a per-validation
    # leak 41 x 100 = ~4 GiB. The stress probe cannot tell them apart, so the worse one is judged — and a long
    # run that validates MORE often (every 10) makes the per-validation model the worse one.
    interval = 500 if leak == "per step" else 10
    f = assess(_stress_with(41), cycle_steps=50, warmup=1, long_run_steps=50000, long_run_interval=interval,
               limit_bytes=24 * GIB, limit_name="cap", headroom_bytes=0)
    assert f.kind == "growth" and f.model == leak and f.fits is False
    steps_left, cycles_left = 50000 - 400, 50000 // interval - 8
    assert f.predicted_per_step_bytes == pytest.approx(1.0 * GIB + 41 / 50 * MIB * 7 * 50 + 41 / 50 * MIB * steps_left,
                                                       rel=0.02)
    assert f.predicted_per_validation_bytes == pytest.approx(
        f.observed_peak_bytes + 41 * MIB * cycles_left, rel=0.02)
    assert f.predicted_peak_bytes == max(f.predicted_per_step_bytes, f.predicted_per_validation_bytes)
    if leak == "per step":
        assert f.reason.startswith("+0.82 MiB per step -> ") and "after 50000 steps > the 24.00 GiB cap" in f.reason
        assert f.reason.endswith("(per validation: " + gib(f.predicted_per_validation_bytes) + " after 100 cycles)")
    else:
        assert f.reason.startswith("+41 MiB per validation -> ") and "after 5000 cycles > the 24.00 GiB cap" in f.reason


def test_the_old_units_bug_would_have_said_it_fits():
    # validating every 500 steps in the long run: per validation alone predicts ~4.9 GiB (fits under 16 GiB),
    # per step ~41 GiB; the verdict must not be "fits"
    f = assess(_stress_with(41), cycle_steps=50, warmup=1, long_run_steps=50000, long_run_interval=500,
               limit_bytes=16 * GIB, limit_name="cap", headroom_bytes=0)
    assert f.predicted_per_validation_bytes < 16 * GIB < f.predicted_per_step_bytes
    assert f.fits is False


def test_insufficient_is_never_a_confident_fit():
    blind = rec(8, peak_gib=1.0, phase="stress", cap_gib=28, vals=[(50, 1.0), (100, 1.1), (150, 1.2)])
    for p in blind.metrics.val_points:
        p.rss_bytes = p.cgroup_bytes = None
        p.time, p.time_source = None, "none"
    f = assess(blind, cycle_steps=50, warmup=1, long_run_steps=5000, long_run_interval=50,
               limit_bytes=24 * GIB, limit_name="cap", headroom_bytes=0)
    assert f.kind == "insufficient" and f.fits is None and f.predicted_peak_bytes is None
    assert f.reason == ("growth cannot be forecast: 0 validation end(s) with a known memory reading, at least 2 "
                        "needed; 3 of 3 had no known time (no sane \"time\" from the trainer and not seen while "
                        "the probe ran)")

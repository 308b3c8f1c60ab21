"""The ladder policy and the outcome classifier are pure: tested with hand-written facts, no processes."""
import dataclasses
import signal
from typing import Optional

import pytest

from hlrp_ladder import search as policy
from hlrp_ladder.probe.outcome import classify
from hlrp_ladder.records import Forecast, Outcome
from tests.handmade import GIB, rec

pytestmark = pytest.mark.pure

LADDER = [8, 12, 16, 20, 24, 32]
PLAN = policy.Plan(batch_sizes=LADDER, limit_bytes=2 * GIB)


def test_rungs_run_ascending_and_stop_at_first_failure():
    assert policy.next_rung(PLAN, []) == policy.Rung(8)
    assert policy.next_rung(PLAN, [rec(8), rec(12)]) == policy.Rung(16)
    assert policy.next_rung(PLAN, [rec(8), rec(12, "oom_killed")]) is None
    assert policy.next_rung(policy.Plan(batch_sizes=[32, 8, 16]), [rec(8)]) == policy.Rung(16)


def test_interrupted_rung_runs_again():
    records = [rec(8), rec(12, "interrupted")]
    assert policy.next_rung(PLAN, records) == policy.Rung(12)
    # a later attempt of the same rung replaces the interrupted one
    assert policy.next_rung(PLAN, records + [rec(12, t=100)]) == policy.Rung(16)


def test_pick_is_highest_ok_below_first_failure_with_reason():
    v = policy.verdict(PLAN, [rec(8), rec(12), rec(16), rec(20), rec(24), rec(32, "oom_killed", 2.1)])
    assert (v.pick, v.exit_code) == (24, policy.EXIT_PICK)
    assert v.reason.startswith("bs=24: highest ok rung; bs=32 oom_killed at 2.10 GiB under a 2.00 GiB cap.")
    assert v.reason.endswith("Confirmed by the one-val ladder only: the spec has no stress section.")
    assert v.confirmed_by == "ladder"


def test_first_rung_failing_means_no_stable_rung():
    v = policy.verdict(PLAN, [rec(8, "rss_breach", 3.0)])
    assert v.pick is None and v.exit_code == policy.EXIT_NO_STABLE
    assert v.reason.startswith("no stable rung: bs=8 rss_breach")


def test_every_rung_ok_picks_the_top_and_says_so():
    v = policy.verdict(policy.Plan(batch_sizes=[8, 16]), [rec(8), rec(16)])
    assert v.pick == 16 and "every rung passed" in v.reason


# ---- stress confirmation ----------------------------------------------------------------------------------------
STRESS = policy.Plan(batch_sizes=LADDER, stress=True, stress_recipe="220 steps, validation every 50 over 2 batches",
                     limit_bytes=int(1.25 * GIB))
ONE_VAL = [rec(8, peak_gib=0.87, cap_gib=1.25), rec(12, peak_gib=0.96, cap_gib=1.25),
           rec(16, peak_gib=1.02, cap_gib=1.25), rec(20, peak_gib=1.12, cap_gib=1.25),
           rec(24, peak_gib=1.20, cap_gib=1.25), rec(32, "oom_killed", 1.25, cap_gib=1.25)]


def stress(bs, outcome="ok", peak=1.19, t=100.0):
    return rec(bs, outcome, peak, phase="stress", cap_gib=1.25, t=t + bs)


def test_stress_runs_at_the_candidate_after_the_ladder():
    assert policy.next_rung(STRESS, ONE_VAL[:3]) == policy.Rung(20)
    assert policy.next_rung(STRESS, ONE_VAL) == policy.Rung(24, "stress")


def test_failed_stress_falls_back_to_the_next_lower_ok_rung():
    records = ONE_VAL + [stress(24, "oom_killed", 1.25)]
    assert policy.next_rung(STRESS, records) == policy.Rung(20, "stress")
    v = policy.verdict(STRESS, records + [stress(20, "ok", 1.19)])
    assert (v.pick, v.confirmed_by, v.exit_code) == (20, "stress", 0)
    assert "Rejected: bs=24 stress oom_killed at 1.25 GiB under a 1.25 GiB cap." in v.reason
    assert v.reason.endswith("Confirmed by the stress phase (220 steps, validation every 50 over 2 batches): "
                             "bs=20 stress ok at 1.19 GiB.")


def test_when_every_stress_fails_there_is_no_pick():
    records = ONE_VAL + [stress(bs, "oom_killed", 1.25) for bs in (24, 20, 16, 12, 8)]
    assert policy.next_rung(STRESS, records) is None
    v = policy.verdict(STRESS, records)
    assert v.pick is None and v.exit_code == policy.EXIT_NO_STABLE
    assert v.reason.startswith("no stable rung: every candidate was rejected.")


def test_forecast_oom_rejects_a_rung_that_survived():
    doomed = stress(24, "forecast_oom", 1.2)
    assert policy.next_rung(STRESS, ONE_VAL + [doomed]) == policy.Rung(20, "stress")


def test_headroom_rejects_a_pick_too_close_to_the_cap():
    plan = policy.Plan(batch_sizes=LADDER, limit_bytes=int(1.25 * GIB), headroom_bytes=100 * 2**20)
    v = policy.verdict(plan, ONE_VAL)
    # 24 at 1.20 GiB leaves 51 MiB, 20 at 1.12 GiB leaves 133 MiB
    assert v.pick == 20
    assert "bs=24 peak 1.20 GiB leaves 51 MiB free under the 1.25 GiB cap, less than the 100 MiB headroom" in v.reason


def test_under_a_cap_the_working_set_is_judged_not_the_page_cache_the_charge_also_holds():
    # measured: bs=20's stress probe charged the whole 1.25 GiB cap in one run (page cache filling it up) and
    # 1.19-1.20 GiB in others; its working set stayed under 1.21 GiB. The charge decided the pick by the cache.
    plan = dataclasses.replace(STRESS, headroom_bytes=32 * 2**20)
    at_cap = rec(20, "ok", 1.25, phase="stress", cap_gib=1.25, t=120.0, ws_gib=1.19)
    at_cap.peaks.cgroup_sampled_bytes = at_cap.peaks.kernel_bytes   # it sat at the cap: no spike was missed
    assert policy.fit_peak(at_cap) == int(1.19 * GIB)
    v = policy.verdict(plan, ONE_VAL + [stress(24, "oom_killed", 1.25), at_cap])
    assert (v.pick, v.confirmed_by) == (20, "stress") and "bs=20 stress ok at 1.19 GiB" in v.reason
    # without a working-set reading (an older record, a cgroup without memory.stat), the charge is all there is
    blind = rec(20, "ok", 1.25, phase="stress", cap_gib=1.25, t=120.0)
    records = ONE_VAL + [stress(24, "oom_killed", 1.25), blind]
    assert policy.next_rung(plan, records) == policy.Rung(16, "stress")  # 20 rejected: no headroom left
    # without a cap the working set plays no part: the RSS high-water mark is judged
    assert policy.fit_peak(rec(20, "ok", 1.0, cap_gib=None, ws_gib=0.5)) == int(1.2 * GIB)


def test_a_spike_between_samples_counts_against_the_working_set():
    # the kernel saw 1.25 GiB, the samples at most 1.10: a 150 MiB spike they missed is added back
    spiky = rec(20, "ok", 1.25, cap_gib=1.25, ws_gib=1.0)
    spiky.peaks.cgroup_sampled_bytes = int(1.10 * GIB)
    assert policy.fit_peak(spiky) == int(1.0 * GIB) + int(1.25 * GIB) - int(1.10 * GIB)
    spiky.peaks.working_set_sampled_bytes = int(1.2 * GIB)
    assert policy.fit_peak(spiky) == int(1.25 * GIB)  # never above the charged peak


def test_warmup_gets_twice_the_cap_within_the_soft_limit():
    # the warm-up must not be squeezed to the cap (the kernel would evict the page cache it exists to fill)
    assert policy.warmup_cap(policy.Plan([8], cap_bytes=GIB, rss_limit_bytes=20 * GIB)) == 2 * GIB
    assert policy.warmup_cap(policy.Plan([8], cap_bytes=GIB, rss_limit_bytes=GIB * 3 // 2)) == GIB * 3 // 2
    assert policy.warmup_cap(policy.Plan([8], cap_bytes=GIB, rss_limit_bytes=GIB // 2)) == GIB  # never below
    assert policy.warmup_cap(policy.Plan([8], rss_limit_bytes=GIB)) is None                   # no cap, none


def test_repeats_must_all_pass_for_the_top_rung():
    plan = policy.Plan(batch_sizes=LADDER, repeats=3, limit_bytes=int(1.25 * GIB))
    assert policy.next_rung(plan, ONE_VAL) == policy.Rung(24, "repeat", 2)
    records = ONE_VAL + [rec(24, "ok", 1.21, phase="repeat", repeat=2, cap_gib=1.25, t=50)]
    assert policy.next_rung(plan, records) == policy.Rung(24, "repeat", 3)
    records.append(rec(24, "oom_killed", 1.25, phase="repeat", repeat=3, cap_gib=1.25, t=51))
    assert policy.next_rung(plan, records) == policy.Rung(20, "repeat", 2)


# ---- bisection ---------------------------------------------------------------------------------------------------
def linear_memory_ladder(plan: policy.Plan, fails_from: int) -> list[int]:
    """Run the policy against a fixture whose one-val probe fails from batch size ``fails_from`` on."""
    records, order = [], []
    while (rung := policy.next_rung(plan, records)) is not None:
        order.append(rung.batch_size)
        outcome = "ok" if rung.batch_size < fails_from else "oom_killed"
        records.append(rec(rung.batch_size, outcome, phase=rung.phase, t=float(len(order))))
    return order


@pytest.mark.parametrize("fails_from", range(12, 69, 4))
def test_bisect_over_8_to_64_step_4_needs_at_most_6_probes(fails_from):
    plan = policy.Plan(batch_sizes=list(range(8, 65, 4)), refine="bisect", granularity=4)
    order = linear_memory_ladder(plan, fails_from)
    assert len(order) <= 6, order
    v = policy.verdict(plan, [])  # nothing run: no pick
    assert v.pick is None
    records = [rec(bs, "ok" if bs < fails_from else "oom_killed", t=float(i)) for i, bs in enumerate(order)]
    assert policy.verdict(plan, records).pick == min(fails_from - 4, 64)


def test_bisect_probes_first_rung_then_top_then_the_middle():
    plan = policy.Plan(batch_sizes=list(range(8, 65, 4)), refine="bisect", granularity=4)
    assert linear_memory_ladder(plan, 48) == [8, 64, 36, 48, 40, 44]
    assert len(linear_memory_ladder(policy.Plan(batch_sizes=list(range(8, 65, 4))), 48)) == 11


@pytest.mark.parametrize("outcome,fragment", [
    ("child_oom", "bs=12 child_oom at 1.00 GiB under a 2.00 GiB cap"),
    ("rss_breach", "bs=12 rss_breach at 1.20 GiB RSS over the 20.00 GiB soft limit"),
    ("cuda_oom", "bs=12 cuda_oom (exit 1: ValueError: boom)"),
])
def test_failure_clauses(outcome, fragment):
    v = policy.verdict(PLAN, [rec(8), rec(12, outcome, exit_code=1, log_line="ValueError: boom")])
    assert v.pick == 8 and fragment in v.reason


# ---- inconclusive: a failure that is not about memory is not a memory verdict ---------------------------------
def test_outcomes_split_into_memory_verdicts_and_inconclusive():
    memory = {o for o in Outcome if o.is_memory_verdict}
    assert memory == {Outcome.oom_killed, Outcome.child_oom, Outcome.rss_breach, Outcome.gpu_breach, Outcome.cuda_oom,
                      Outcome.forecast_oom}
    assert {o for o in Outcome if o.is_inconclusive} == {Outcome.error, Outcome.timeout}


BOOM = "ValueError: batch_size must divide the number of action chunks"


def test_an_error_is_retried_then_the_run_is_inconclusive_with_exit_5():
    first = rec(16, "error", exit_code=1, log_line=BOOM, t=16)
    records = [rec(8), rec(12), first]
    # not a verdict: the same rung again, in its own folder (retry 1), never a pick of bs=12
    assert policy.next_rung(PLAN, records) == policy.Rung(16, "ladder", 0, 1)
    assert policy.verdict(PLAN, records).status == "unfinished"
    records.append(rec(16, "error", exit_code=1, log_line=BOOM, t=17, retry=1))
    assert policy.next_rung(PLAN, records) is None
    v = policy.verdict(PLAN, records)
    assert (v.pick, v.exit_code, v.status) == (None, policy.EXIT_INCONCLUSIVE, "inconclusive")
    assert v.reason == (f"bs=16 error (exit 1: {BOOM}), on its retry too: not a memory verdict; bs=12 passed. "
                        f"Fix the error and --resume, or launch-overnight --pick 12 to accept it")


def test_a_retry_that_passes_continues_the_ladder():
    records = [rec(8), rec(12, "timeout", t=12), rec(12, "ok", t=13, retry=1)]
    assert policy.next_rung(PLAN, records) == policy.Rung(16)


def test_retries_zero_ends_at_the_first_error_and_a_timeout_says_so():
    plan = policy.Plan(batch_sizes=LADDER, retries=0, limit_bytes=2 * GIB)
    v = policy.verdict(plan, [rec(8, "timeout")])
    assert v.status == "inconclusive" and v.reason == (
        "bs=8 timeout after 10 s: not a memory verdict; no rung passed. Find why it ran past timeout_s (or raise "
        "it) and --resume")


def test_an_error_at_the_top_rung_does_not_send_bisection_down():
    plan = policy.Plan(batch_sizes=list(range(8, 65, 4)), refine="bisect")
    records = [rec(8, t=1), rec(64, "error", exit_code=1, log_line=BOOM, t=2)]
    assert policy.next_rung(plan, records) == policy.Rung(64, "ladder", 0, 1)
    records.append(rec(64, "error", exit_code=1, log_line=BOOM, t=3, retry=1))
    assert policy.next_rung(plan, records) is None
    v = policy.verdict(plan, records)
    assert v.status == "inconclusive" and v.reason.startswith("bs=64 error (exit 1: ValueError")
    assert "bs=8 passed" in v.reason


def test_a_stress_error_is_retried_and_never_rejects_the_candidate():
    records = ONE_VAL + [stress(24, "error")]
    assert policy.next_rung(STRESS, records) == policy.Rung(24, "stress", 0, 1)
    records.append(stress(24, "error", t=200).model_copy(update={"retry": 1}))
    assert policy.next_rung(STRESS, records) is None  # not bs=20: an error is no reason to go down
    v = policy.verdict(STRESS, records)
    assert v.status == "inconclusive" and v.exit_code == 5
    assert v.reason.startswith("bs=24 stress error (exit 0), on its retry too: not a memory verdict; bs=24 passed "
                               "its one-val probe only.")
    assert v.reason.endswith("or launch-overnight --pick 24 to accept it")


def test_a_repeat_timeout_is_retried():
    plan = policy.Plan(batch_sizes=LADDER, repeats=2, limit_bytes=int(1.25 * GIB))
    records = ONE_VAL + [rec(24, "timeout", phase="repeat", repeat=2, cap_gib=1.25, t=50)]
    assert policy.next_rung(plan, records) == policy.Rung(24, "repeat", 2, 1)


def test_a_stress_pick_whose_growth_cannot_be_forecast_is_inconclusive():
    plan = policy.Plan(batch_sizes=LADDER, stress=True, forecast_required=True, limit_bytes=int(1.25 * GIB))
    blind = stress(24).model_copy(update={"forecast": Forecast(
        kind="insufficient", domain="cgroup", reason="growth cannot be forecast: 0 validation end(s) with a known "
                                                     "memory reading, at least 2 needed")})
    v = policy.verdict(plan, ONE_VAL + [blind])
    assert v.status == "inconclusive" and v.pick is None
    assert v.reason.startswith("bs=24 stress ok at 1.19 GiB, but growth cannot be forecast: 0 validation end(s)")
    assert "launch-overnight --pick 24 to accept it" in v.reason
    # without a long run to forecast for, the stress probe alone confirms it
    assert policy.verdict(STRESS, ONE_VAL + [blind]).pick == 24


# ---- bisection and the stress fallback ----------------------------------------------------------------------
GRID = list(range(8, 65, 4))


def simulate(plan: policy.Plan, one_val_fails_from: int, stress_fails_from: int) -> tuple[Optional[int], list]:
    records, order = [], []
    while (rung := policy.next_rung(plan, records)) is not None:
        assert len(order) < 100
        order.append((rung.batch_size, rung.phase))
        limit = stress_fails_from if rung.phase == "stress" else one_val_fails_from
        outcome = "ok" if rung.batch_size < limit else "oom_killed"
        records.append(rec(rung.batch_size, outcome, phase=rung.phase, t=float(len(order))))
    return policy.verdict(plan, records).pick, order


@pytest.mark.parametrize("one_val_limit", range(8, 73, 4))
def test_bisect_with_stress_fallback_picks_what_the_linear_ladder_picks(one_val_limit):
    linear = policy.Plan(batch_sizes=GRID, stress=True)
    bisect = policy.Plan(batch_sizes=GRID, stress=True, refine="bisect", granularity=4)
    for stress_limit in range(8, 73, 4):
        expected = max((g for g in GRID if g < min(one_val_limit, stress_limit)), default=None)
        lin, _ = simulate(linear, one_val_limit, stress_limit)
        bis, order = simulate(bisect, one_val_limit, stress_limit)
        assert lin == expected and bis == expected, (one_val_limit, stress_limit, order)


def test_after_stress_rejects_40_and_36_the_unprobed_rungs_below_are_tried():
    # Bisection finds the one-val boundary at 40/44 having probed only 8, 36, 40, 44, 48, 64. Stress rejects 40
    # and 36; the fallback once walked only probed rungs and picked 8. Now: gallop down to 28 (its one-val
    # probe first), accepted, then the one size left between 28 and the rejected 36.
    plan = policy.Plan(batch_sizes=GRID, stress=True, refine="bisect", granularity=4)
    pick, order = simulate(plan, one_val_fails_from=44, stress_fails_from=36)
    assert pick == 32
    assert order[6:] == [(40, "stress"), (36, "stress"), (28, "refine"), (28, "stress"), (32, "refine"),
                         (32, "stress")]


# ---- outcome classification: exit status + kernel counters + monitor action + log -> outcome -------------------
KILL = -signal.SIGKILL


@pytest.mark.parametrize("status,stop,before,after,log,expected", [
    (0, None, 0, 0, [], Outcome.ok),
    (KILL, None, 0, 1, ["Killed"], Outcome.oom_killed),
    (KILL, None, 0, 0, [], Outcome.error),             # SIGKILL from someone else: not an OOM kill
    (137, None, 0, 0, ["exit 137"], Outcome.error),    # exit code 137 alone is not the signal
    (137, None, 3, 4, [], Outcome.child_oom),          # a worker was OOM-killed, the parent exited 137
    (1, None, 0, 1, ["worker died"], Outcome.child_oom),
    (0, None, 0, 1, [], Outcome.child_oom),            # the kernel killed something even though main exited 0
    (1, None, 0, 0, ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"], Outcome.cuda_oom),
    (1, None, 0, 0, ["ValueError: bad"], Outcome.error),
    (KILL, "rss_breach", 0, 0, [], Outcome.rss_breach),
    (KILL, "timeout", 0, 0, [], Outcome.timeout),
    (KILL, "interrupted", 0, 0, [], Outcome.interrupted),
])
def test_classify(status, stop, before, after, log, expected):
    outcome, ev = classify(status, stop, before, after, "cgroup v1 memory.oom_control", log)
    assert outcome == expected
    assert ev.exit_code == (128 + signal.SIGKILL if status == KILL else status)
    if expected == Outcome.cuda_oom:
        assert "CUDA out of memory" in ev.log_line




# ---- no host-wide evidence blamed on a probe ---------------------------------------------------------------------
HOST = "/proc/vmstat (system-wide)"


@pytest.mark.parametrize("status,victims,expected,fragment", [
    (0, None, Outcome.ok, "cannot be attributed to this tree"),          # another user's job hit its limit
    (0, set(), Outcome.ok, "the kernel log names no process of this tree"),
    (1, None, Outcome.error, "cannot be attributed"),                    # non-zero exit: not guessed as child_oom
    (KILL, None, Outcome.oom_killed, "corroborated, not proven"),         # SIGKILL + the counter: corroborated
    (KILL, {100}, Outcome.oom_killed, "named in the kernel log"),
    (KILL, set(), Outcome.error, "no kernel OOM kill on record"),         # the log names others, not ours
    (1, {101}, Outcome.child_oom, "pid 101"),
])
def test_host_wide_oom_counter_only_corroborates(status, victims, expected, fragment):
    outcome, ev = classify(status, None, 5, 6, HOST, [], host_wide=True, victims=victims, main_pid=100)
    assert outcome == expected, ev.detail
    assert fragment in ev.detail


def test_host_wide_counter_unchanged_is_plain():
    assert classify(0, None, 5, 5, HOST, [], host_wide=True, victims=None, main_pid=1)[1].detail == "exited 0"


# ---- refine: model ---------------------------------------------------------------------------------------------
def run_model(plan: policy.Plan, memory) -> tuple[Optional[int], list[int], str]:
    """Probe with a memory curve (GiB by bs) under plan.limit_bytes: passing probes report their peak, failing ones
    are OOM-killed at the cap (a censored reading)."""
    records, order = [], []
    limit = plan.limit_bytes / GIB
    while (rung := policy.next_rung(plan, records)) is not None:
        order.append(rung.batch_size)
        need = memory(rung.batch_size)
        records.append(rec(rung.batch_size, "ok" if need <= limit else "oom_killed", min(need, limit),
                           phase=rung.phase, t=float(len(order)), cap_gib=limit))
        assert len(order) < 30
    v = policy.verdict(plan, records)
    return v.pick, order, v.reason


def linear_pick(memory, limit_gib):
    return max((bs for bs in GRID if memory(bs) <= limit_gib), default=None)


LINE = lambda bs: 0.8 + bs * 0.019  # noqa: E731  - the bundled trainer's shape: ~0.8 GiB + 19 MiB per sample


@pytest.mark.parametrize("between", range(len(GRID) - 1))
def test_model_reaches_the_verdict_in_3_one_val_probes_on_linear_memory(between):
    # a limit between two rungs' peaks (where a real limit falls: it is no rung's exact peak)
    lo, hi = GRID[between], GRID[between + 1]
    limit = (LINE(lo) + LINE(hi)) / 2
    plan = policy.Plan(batch_sizes=GRID, refine="model", limit_bytes=int(limit * GIB))
    pick, order, reason = run_model(plan, LINE)
    assert pick == linear_pick(LINE, limit) == lo
    assert len(order) <= 3, order
    if hi not in order and pick != GRID[-1]:  # the rung above was predicted, not probed: the verdict says so
        assert f"bs={hi} was not probed: the memory model (" in reason


def test_model_never_picks_other_than_the_linear_ladder_on_linear_memory():
    for limit_mib in range(900, 2100, 7):
        limit = limit_mib / 1024
        plan = policy.Plan(batch_sizes=GRID, refine="model", limit_bytes=limit_mib * 2**20)
        pick, order, _ = run_model(plan, LINE)
        assert pick == linear_pick(LINE, limit), limit_mib
        assert len(order) <= 4, (limit_mib, order)


def test_model_falls_back_to_bisection_when_memory_has_a_knee():
    knee = lambda bs: 1.0 + (0.002 * bs if bs <= 32 else 0.064 + 0.05 * (bs - 32))  # noqa: E731
    for limit in (1.05, 1.3, 1.6, 2.5):
        plan = policy.Plan(batch_sizes=GRID, refine="model", limit_bytes=int(limit * GIB))
        pick, order, _ = run_model(plan, knee)
        assert pick == linear_pick(knee, limit), (limit, order)
        assert len(order) <= 7, order

"""The ladder policy and the outcome classifier are pure: tested with hand-written facts, no processes."""
import json
import signal

import pytest

from hlrp_ladder import policy
from hlrp_ladder.probe.metrics import read_metrics
from hlrp_ladder.probe.outcome import classify
from hlrp_ladder.records import Outcome
from hlrp_ladder.spec import MetricsRegex
from tests.records import GIB, rec

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
    ("timeout", "bs=12 timeout after 10 s"),
    ("error", "bs=12 error (exit 1: ValueError: boom)"),
    ("child_oom", "bs=12 child_oom at 1.00 GiB under a 2.00 GiB cap"),
])
def test_failure_clauses(outcome, fragment):
    v = policy.verdict(PLAN, [rec(8), rec(12, outcome, exit_code=1, log_line="ValueError: boom")])
    assert fragment in v.reason


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


def test_metrics_from_jsonl_skip_warmup_and_put_memory_beside_val_end(tmp_path):
    path = tmp_path / "m.jsonl"
    events = [{"event": "train", "step": 5, "step_per_s": 1.0, "samples_per_s": 8.0, "time": 101},
              {"event": "train", "step": 10, "step_per_s": 4.0, "samples_per_s": 32.0, "time": 102},
              {"event": "train", "step": 15, "step_per_s": 6.0, "samples_per_s": 48.0, "time": 103},
              {"event": "val_end", "step": 15, "val_loss": 0.5, "time": 104}]
    path.write_text("\n".join(json.dumps(e) for e in events) + '\n{"event": "tra')  # last line cut by a kill
    timeline = [(1.0, 100, 90), (3.9, 300, 250), (4.1, 400, 350)]  # 4.1 s is after the event: not used
    m = read_metrics(path, [], MetricsRegex(), started_at=100.0, timeline=timeline)
    assert m.source == "jsonl" and m.last_step == 15
    assert m.step_per_s == 5.0 and m.samples_per_s == 40.0  # median after the first window
    assert m.val_loss == 0.5 and m.val_points[0].rss_bytes == 300 and m.val_points[0].cgroup_bytes == 250


def test_metrics_from_log_regex(tmp_path):
    lines = ["it 1 2.0 it/s", "it 2 3.0 it/s", "it 3 5.0 it/s", "eval loss 0.25"]
    m = read_metrics(tmp_path / "none.jsonl", lines, MetricsRegex(step_per_s=r"([\d.]+) it/s",
                                                                 val_loss=r"eval loss ([\d.]+)"), 0.0, [])
    assert m.source == "regex" and m.step_per_s == 4.0 and m.val_loss == 0.25

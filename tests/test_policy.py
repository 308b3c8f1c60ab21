"""The ladder policy and the outcome classifier are pure: tested with hand-written facts, no processes."""
import json
import signal

import pytest

from hlrp_ladder import policy
from hlrp_ladder.probe.metrics import read_metrics
from hlrp_ladder.probe.outcome import classify
from hlrp_ladder.records import Outcome
from hlrp_ladder.spec import MetricsRegex
from tests.records import rec

LADDER = [8, 12, 16, 20, 24, 32]


def test_rungs_run_ascending_and_stop_at_first_failure():
    assert policy.next_rung(LADDER, []) == policy.Rung(8)
    assert policy.next_rung(LADDER, [rec(8), rec(12)]) == policy.Rung(16)
    assert policy.next_rung(LADDER, [rec(8), rec(12, "oom_killed")]) is None
    assert policy.next_rung([32, 8, 16], [rec(8)]) == policy.Rung(16)


def test_interrupted_rung_runs_again():
    records = [rec(8), rec(12, "interrupted")]
    assert policy.next_rung(LADDER, records) == policy.Rung(12)
    # a later attempt of the same rung replaces the interrupted one
    assert policy.next_rung(LADDER, records + [rec(12, t=100)]) == policy.Rung(16)


def test_pick_is_highest_ok_below_first_failure_with_reason():
    v = policy.verdict(LADDER, [rec(8), rec(12), rec(16), rec(20), rec(24), rec(32, "oom_killed", 2.1)])
    assert (v.pick, v.exit_code) == (24, policy.EXIT_PICK)
    assert v.reason == "bs=24: highest ok rung; bs=32 oom_killed at 2.10 GiB under a 2.00 GiB cap"


def test_first_rung_failing_means_no_stable_rung():
    v = policy.verdict(LADDER, [rec(8, "rss_breach", 3.0)])
    assert v.pick is None and v.exit_code == policy.EXIT_NO_STABLE
    assert v.reason.startswith("no stable rung: bs=8 rss_breach")


def test_every_rung_ok_picks_the_top_and_says_so():
    v = policy.verdict([8, 16], [rec(8), rec(16)])
    assert v.pick == 16 and "every rung passed" in v.reason


@pytest.mark.parametrize("outcome,fragment", [
    ("timeout", "bs=12 timeout after 10 s"),
    ("error", "bs=12 error (exit 1: ValueError: boom)"),
    ("child_oom", "bs=12 child_oom at 1.00 GiB under a 2.00 GiB cap"),
])
def test_failure_clauses(outcome, fragment):
    v = policy.verdict(LADDER, [rec(8), rec(12, outcome, exit_code=1, log_line="ValueError: boom")])
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
    timeline = [(1.0, 100, 90), (3.9, 300, 250), (5.0, 400, 350)]
    m = read_metrics(path, [], MetricsRegex(), started_at=100.0, timeline=timeline)
    assert m.source == "jsonl" and m.last_step == 15
    assert m.step_per_s == 5.0 and m.samples_per_s == 40.0  # median after the first window
    assert m.val_loss == 0.5 and m.val_points[0].rss_bytes == 300 and m.val_points[0].cgroup_bytes == 250


def test_metrics_from_log_regex(tmp_path):
    lines = ["it 1 2.0 it/s", "it 2 3.0 it/s", "it 3 5.0 it/s", "eval loss 0.25"]
    m = read_metrics(tmp_path / "none.jsonl", lines, MetricsRegex(step_per_s=r"([\d.]+) it/s",
                                                                 val_loss=r"eval loss ([\d.]+)"), 0.0, [])
    assert m.source == "regex" and m.step_per_s == 4.0 and m.val_loss == 0.25

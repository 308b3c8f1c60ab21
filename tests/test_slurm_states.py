"""SLURM's view of a job merged with the runner's record: pure, no cluster. Every state the executor can meet,
including the ones a single-node test cluster cannot produce cheaply (PREEMPTED, BOOT_FAIL, a cancel by an
admin). The real-cluster tests (test_slurm.py) see OUT_OF_MEMORY, TIMEOUT, NODE_FAIL, CANCELLED, PENDING."""
import pytest

from hlrp_ladder.executors.slurm import expand_hostlist, time_limit
from hlrp_ladder.executors.slurm.commands import Job, format_minutes, minutes
from hlrp_ladder.executors.slurm.states import merge
from hlrp_ladder.records import Outcome
from hlrp_ladder.spec import SlurmSettings
from tests.handmade import rec

pytestmark = pytest.mark.pure


def job(state, reason="None", exit_code="0:0"):
    return Job("17", state, reason, exit_code, "", "node3")


def runner(outcome="ok", exit_code=0, signal=None):
    r = rec(16, outcome, exit_code=exit_code)
    r.evidence.signal, r.evidence.detail = signal, "what the runner saw"
    return r


@pytest.mark.parametrize("state,seen,cancelled,expected", [
    ("COMPLETED", runner(), False, Outcome.ok),
    ("FAILED", runner("error", 1), False, Outcome.error),
    ("OUT_OF_MEMORY", runner("oom_killed", 137, "SIGKILL"), False, Outcome.oom_killed),
    ("OUT_OF_MEMORY", runner("error", 137, "SIGKILL"), False, Outcome.oom_killed),   # counter missed, SLURM saw
    ("OUT_OF_MEMORY", runner("ok", 0), False, Outcome.child_oom),                    # main lived on: a worker
    ("OUT_OF_MEMORY", runner("error", 1), False, Outcome.child_oom),
    ("TIMEOUT", runner("interrupted"), False, Outcome.timeout),
    ("NODE_FAIL", runner("interrupted"), False, Outcome.error),
    ("PREEMPTED", runner("interrupted"), False, Outcome.error),
    ("BOOT_FAIL", runner("error", 1), False, Outcome.error),
    ("CANCELLED", runner("interrupted"), True, Outcome.interrupted),
    ("CANCELLED", runner("interrupted"), False, Outcome.error),                      # an admin's scancel
])
def test_merge(state, seen, cancelled, expected):
    merged = merge(job(state, exit_code="0:125" if state == "OUT_OF_MEMORY" else "0:0"), seen, cancelled)
    assert merged.outcome == expected
    assert merged.evidence.scheduler.startswith(f"SLURM job 17: {state}")
    assert not expected.is_memory_verdict or state == "OUT_OF_MEMORY"  # only SLURM's OOM makes a memory verdict


def test_lost_and_preempted_say_so_and_are_retried():
    merged = merge(job("PREEMPTED", "Preempted"), runner("interrupted"), False)
    assert merged.outcome.is_inconclusive
    assert merged.evidence.detail.startswith("the job was lost (PREEMPTED): not a memory verdict")
    assert merged.evidence.log_line == "SLURM job 17: PREEMPTED (Reason=Preempted), ExitCode 0:0 on node3"


def test_a_job_slurm_forgot_keeps_the_runners_record():
    seen = runner("oom_killed", 137, "SIGKILL")
    assert merge(None, seen, False) == seen


def test_times_and_node_lists():
    assert minutes("30") == 30 and minutes("1:30:00") == 90 and minutes("2-00:00:00") == 2880
    assert minutes("UNLIMITED") is None and minutes("00:00:30") == 1
    assert format_minutes(90) == "01:30:00" and format_minutes(3000) == "2-02:00:00"
    settings = SlurmSettings()
    assert time_limit(settings, 300, None) == "00:07:00"           # a probe: its timeout + 2 minutes
    assert time_limit(settings, None, 9 * 3600) == "09:54:00"      # the long run: 9 h + 10 %
    assert time_limit(SlurmSettings(time="00:30:00"), 300, None) == "00:30:00"
    assert expand_hostlist("node[1-3],gpu07,cpu[08-09]") == {"node1", "node2", "node3", "gpu07", "cpu08", "cpu09"}

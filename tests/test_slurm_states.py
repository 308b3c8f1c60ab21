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


# --- the watcher's cadence and what it keeps of a job that ended (pure: the real cluster's tests count the RPCs)

def test_the_watcher_polls_once_a_second_while_jobs_are_new_then_backs_off_to_30_s():
    from hlrp_ladder.executors.slurm.watcher import interval
    assert interval(100.0, [], unanswered=True) == 1.0                  # a job never answered about: soon
    assert interval(100.0, [99.5], unanswered=False) == 1.0             # just changed (or nudged)
    assert interval(100.0, [50.0], unanswered=False) == 5.0             # quiet 50 s: a tenth of that
    assert interval(1000.0, [0.0], unanswered=False) == 30.0            # quiet for long: 30 s at most
    assert interval(1000.0, [0.0, 995.0], unanswered=False) == 1.0      # the liveliest job sets the pace
    assert interval(100.0, [99.0], unanswered=False, min_s=5.0) == 5.0  # executor.slurm.poll_s raises the floor


def test_an_ended_job_is_completed_by_accounting_and_a_purged_one_never_invented():
    from hlrp_ladder.executors.slurm.watcher import ACCOUNTING_TRIES, combine
    ended = Job("17", "OUT_OF_MEMORY", "OutOfMemory", "0:125", "", "node3", "squeue")
    booked = Job("17", "OUT_OF_MEMORY", "OutOfMemory", "0:125", "0:125", "node3", "sacct", "412M")
    job_, final = combine(ended, booked, asked=True, tries=1)
    assert final and job_.derived_exit_code == "0:125" and job_.max_rss == "412M" and job_.source == "squeue+sacct"
    assert "MaxRSS 412M (sacct)" in job_.words() and "DerivedExitCode 0:125" in job_.words()
    # slurmdbd has not recorded the end yet: wait a few polls, then go with the controller's word
    lagging = Job("17", "RUNNING", "None", "0:0", "", "node3", "sacct")
    assert combine(ended, lagging, asked=True, tries=1) == (ended, False)
    assert combine(ended, lagging, asked=True, tries=ACCOUNTING_TRIES) == (ended, True)
    assert combine(ended, None, asked=False, tries=1) == (ended, True)         # no accounting: nothing to wait for
    # purged from the controller: accounting's word alone, or nothing at all (never a made-up state)
    assert combine(None, booked, asked=True, tries=1) == (booked, True)
    assert combine(None, None, asked=True, tries=1) == (None, True)
    assert combine(None, None, asked=False, tries=1) == (None, True)
    # the controller forgot it but slurmdbd still says RUNNING (a runaway job): asked again, never forever
    assert combine(None, lagging, asked=True, tries=1) == (lagging, False)
    assert combine(None, lagging, asked=True, tries=ACCOUNTING_TRIES) == (lagging, True)
    # sacct failed (slurmdbd restarting): not taken for "no accounting" at once
    assert combine(None, None, asked=False, tries=1, failed=True) == (None, False)
    assert combine(None, None, asked=False, tries=ACCOUNTING_TRIES, failed=True) == (None, True)
    assert combine(ended, None, asked=False, tries=1, failed=True) == (ended, False)


def test_memory_limits_from_partition_and_qos():
    from hlrp_ladder.executors.slurm.commands import tres_bytes
    from hlrp_ladder.preflight.slurm import memory_limits
    assert tres_bytes("500M") == 500 * 2**20 and tres_bytes("2G") == 2 * 2**30 and tres_bytes("300") == 300 * 2**20
    part = {"PartitionName": "gpu", "MaxMemPerNode": "4000", "MaxMemPerCPU": "UNLIMITED"}
    qos = {"normal": {"MaxTRES": 2**30}}
    # a QOS limit binds only where accounting enforces limits; a partition's always (refused, or pending forever)
    assert memory_limits(part, qos, cpus=2, enforce="associations,limits,qos") == [
        ("partition gpu's MaxMemPerNode=4000M", 4000 * 2**20, True), ("QOS normal's MaxTRES mem=1024M", 2**30, True)]
    assert memory_limits(part, qos, cpus=2, enforce="none")[1] == ("QOS normal's MaxTRES mem=1024M", 2**30, False)
    assert memory_limits(part, qos, cpus=2, enforce="nosteplimits")[1][2] is False   # a token, not a substring
    per_cpu = memory_limits({"PartitionName": "cpu", "MaxMemPerCPU": "1000"}, {}, cpus=4)
    assert per_cpu == [("partition cpu's MaxMemPerCPU=1000M x 4 CPU(s) per task (SLURM raises the job's CPUs to "
                        "fit)", 4000 * 2**20, False)]


def test_squeue_and_sacct_lines_as_seen_on_the_test_cluster():
    """Lines verbatim from tests/slurm/FACTS.md (squeue's -O with '|' suffixes; sacct -P in ACCOUNTING_FIELDS'
    order, with its .batch and step lines)."""
    from hlrp_ladder.executors.slurm.commands import parse_accounting, parse_queue
    seen = parse_queue("25|COMPLETED|None|0|253|vm|\n5|FAILED|NonZeroExitCode|768|0|vm|\n"
                       "7|PENDING|Resources|0|0|n/a|\n99|RUNNING|None|0|0|vm|\n", ["25", "5", "7"])
    assert set(seen) == {"25", "5", "7"}                                 # another job of the user's: not ours
    assert (seen["25"].state, seen["25"].exit_code, seen["25"].derived_exit_code) == ("COMPLETED", "0:0", "0:125")
    assert seen["5"].exit_code == "3:0" and seen["5"].reason == "NonZeroExitCode" and seen["7"].state == "PENDING"
    assert seen["7"].words() == "SLURM job 7: PENDING (Reason=Resources), ExitCode 0:0"
    booked = parse_accounting("24|OUT_OF_MEMORY|0:125|0:0||None|vm\n24.batch|OUT_OF_MEMORY|0:125||0||vm\n"
                              "25|COMPLETED|0:0|0:125||None|vm\n25.batch|COMPLETED|0:0||0||vm\n"
                              "25.0|OUT_OF_MEMORY|0:125||0||vm\n"
                              "29|CANCELLED by 65534|0:0|0:0||None|vm\n29.batch|CANCELLED|0:15||404K||vm\n"
                              "30|FAILED|15:0|0:0||None|vm\n30.batch|FAILED|15:0||400K||vm\n"
                              "32|CANCELLED by 65534|0:0|0:0||None|None assigned\n", ["24", "25", "29", "30", "32"])
    assert booked["24"].state == "OUT_OF_MEMORY" and booked["24"].max_rss == "0" and booked["24"].node == "vm"
    assert booked["25"].derived_exit_code == "0:125" and booked["29"].max_rss == "404K"
    assert booked["29"].state == "CANCELLED" and booked["32"].node == "None assigned"
    assert booked["29"].words() == ("SLURM job 29 (from accounting): CANCELLED, ExitCode 0:0 on vm, MaxRSS 404K "
                                    "(sacct)")
    assert "MaxRSS 0 (sacct: the job ended before its first sample)" in booked["24"].words()
    assert "ExitCode 15:0 (sacct's: modulo 128)" in booked["30"].words()       # the runner exited 143
    assert booked["32"].words() == "SLURM job 32 (from accounting): CANCELLED, ExitCode 0:0"


def _handle(tmp_path, watcher, record_outcome=None):
    from hlrp_ladder.executors.slurm import SlurmHandle
    from hlrp_ladder.probe.folder import ProbeFolder
    from hlrp_ladder.records import ProbeRequest
    req = ProbeRequest(folder=tmp_path / "bs-0016", batch_size=16, phase="ladder", argv=["x"], cwd=".",
                       rss_limit_bytes=1, cgroup_name="c")
    req.folder.mkdir()
    if record_outcome is not None:
        r = rec(16, record_outcome)
        r.folder = "bs-0016"
        ProbeFolder(req.folder).write_record(r)
    return SlurmHandle(req, "17", 0.0, watcher)


def test_a_handle_ends_only_when_its_watcher_settled_and_silence_never_overwrites_a_record(tmp_path, monkeypatch):
    """The handle's decisions over the watcher's state (set here as a poll would; the watcher is not due, so no
    SLURM tool runs): 'ended' only once settled, so status never reads an ended job with no record yet as lost;
    and a controller silent for CONTROLLER_WAIT_S leaves a runner's record as it was, saying so."""
    import time as _time

    import hlrp_ladder.executors.slurm as slurm_mod
    from hlrp_ladder.executors.slurm.watcher import Watcher
    watcher = Watcher()
    handle = _handle(tmp_path, watcher, "oom_killed")
    watcher._polled_at = _time.monotonic() + 3600          # not due: the state below is what it knows
    entry = watcher.entries["17"]
    entry.answered, entry.job = True, Job("17", "OUT_OF_MEMORY", "OutOfMemory", "0:125", "", "vm")
    assert handle.state() == "running" and handle.poll() is None   # ended, accounting not heard yet
    entry.settled = True
    assert handle.state() == "ended"
    got = handle.poll()
    assert got.outcome == Outcome.oom_killed and "SLURM agrees (OUT_OF_MEMORY)" in got.evidence.detail
    (tmp_path / "other").mkdir()
    silent = _handle(tmp_path / "other", Watcher(), "ok")
    silent.watcher._polled_at = _time.monotonic() + 3600
    monkeypatch.setattr(slurm_mod, "CONTROLLER_WAIT_S", 0.0)
    got = silent.poll()
    assert got.outcome == Outcome.ok and got.evidence.scheduler.startswith("SLURM did not answer about job 17")


def test_a_job_that_left_no_record_gets_slurms_words_and_a_cancelled_pending_one_is_ours(tmp_path):
    """No runner's record: a job we cancelled while it was pending is `interrupted` (SLURM's CANCELLED merged in);
    a job neither the controller nor accounting knows is an `error` whose evidence says so, never a made-up
    state and never "the runner's record alone"."""
    import time as _time

    from hlrp_ladder.executors.slurm.watcher import Watcher
    watcher = Watcher()
    (tmp_path / "a").mkdir()
    pending = _handle(tmp_path / "a", watcher)
    pending.cancelled_at = _time.monotonic()
    watcher._polled_at = _time.monotonic() + 3600
    entry = watcher.entries["17"]
    entry.answered, entry.settled = True, True
    entry.job = Job("17", "CANCELLED", "Resources", "0:0", "", "n/a", "squeue")
    got = pending.poll()
    assert got.outcome == Outcome.interrupted and got.evidence.scheduler.startswith("SLURM job 17: CANCELLED")
    (tmp_path / "b").mkdir()
    gone_watcher = Watcher()
    gone = _handle(tmp_path / "b", gone_watcher)
    gone_watcher._polled_at = _time.monotonic() + 3600
    gone_watcher._accounting = "accounting_storage/none"
    e = gone_watcher.entries["17"]
    e.answered, e.settled, e.gone = True, True, True
    got = gone.poll()
    assert got.outcome == Outcome.error and got.evidence.scheduler == (
        "SLURM job 17: no longer known to the controller (purged after MinJobAge) and no accounting "
        "(AccountingStorageType=accounting_storage/none)")

"""A SLURM job's state merged with the node-side record: pure, tested without a cluster.

The in-job runner sees the process tree and the job cgroup's own counters (peak, ``oom_kill``); SLURM sees the
job from outside (``OUT_OF_MEMORY``, ``TIMEOUT``, ``NODE_FAIL``, ``PREEMPTED``, ``CANCELLED``). A memory verdict
needs memory evidence: ``OUT_OF_MEMORY`` is one (SLURM detected an OOM kill in the job's cgroup), so the probe
is ``oom_killed`` (or ``child_oom``, when the runner saw the main process live on), with SLURM's words beside
the runner's. A job lost with its node, preempted or cancelled by someone else says nothing about memory: that
probe is inconclusive (``error``) and retried. A job the user cancelled is ``interrupted``.
"""
from __future__ import annotations

from typing import Optional

from hlrp_ladder.executors.slurm.commands import Job
from hlrp_ladder.records import Evidence, Outcome, ProbeRecord

LOST = {"NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}


def merge(job: Optional[Job], record: ProbeRecord, cancelled: bool) -> ProbeRecord:
    """The node-side ``record`` (or a substitute made from nothing) with SLURM's evidence merged in."""
    record = record.model_copy(deep=True)
    ev: Evidence = record.evidence
    if job is None:
        return record
    ev.scheduler = job.words()
    state = job.state
    if state == "OUT_OF_MEMORY":
        if record.outcome not in (Outcome.oom_killed, Outcome.child_oom):
            main_killed = ev.signal == "SIGKILL" or record.evidence.exit_code in (None, 137)
            record.outcome = Outcome.oom_killed if main_killed and record.outcome != Outcome.ok else Outcome.child_oom
            ev.detail = (f"SLURM detected an OOM kill in the job's cgroup (--mem); the runner saw: "
                         f"{ev.detail or 'nothing (it left no record)'}")
        else:
            ev.detail += "; SLURM agrees (OUT_OF_MEMORY)"
    elif state == "TIMEOUT":
        record.outcome = Outcome.timeout
        ev.detail = f"SLURM stopped the job at its time limit (--time); the runner saw: {ev.detail or 'nothing'}"
    elif state in LOST:
        record.outcome = Outcome.error
        ev.detail = f"the job was lost ({state}): not a memory verdict; the runner saw: {ev.detail or 'nothing'}"
        ev.log_line = job.words()
    elif state == "CANCELLED" and cancelled:
        if record.outcome != Outcome.interrupted:
            record.outcome = Outcome.interrupted
            ev.detail = f"stopped by the user (scancel); the runner saw: {ev.detail or 'nothing'}"
    elif state == "CANCELLED":
        record.outcome = Outcome.error
        ev.detail = ("the job was cancelled by someone else (an admin, or the scheduler): not a memory verdict; "
                     f"the runner saw: {ev.detail or 'nothing'}")
        ev.log_line = job.words()
    return record

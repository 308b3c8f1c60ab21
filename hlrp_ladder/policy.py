"""The ladder policy: pure functions over probe records. No I/O, no processes, no clock.

Rungs run in ascending batch size; the first non-``ok`` rung stops the ladder; the pick is the highest ``ok``
rung below it. ``interrupted`` records are not verdicts: that rung is run again on resume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from hlrp_ladder.records import Outcome, ProbeRecord
from hlrp_ladder.sizes import gib

EXIT_PICK, EXIT_USAGE, EXIT_NO_STABLE, EXIT_INTERRUPTED = 0, 2, 3, 130


@dataclass(frozen=True)
class Rung:
    batch_size: int
    phase: str = "ladder"


@dataclass(frozen=True)
class Verdict:
    pick: Optional[int]
    reason: str
    exit_code: int
    failed: Optional[ProbeRecord] = None


def finished(records: Iterable[ProbeRecord], phase: str = "ladder") -> dict[int, ProbeRecord]:
    """The latest finished (not interrupted) record of each batch size in a phase."""
    out: dict[int, ProbeRecord] = {}
    for rec in sorted(records, key=lambda r: (r.started_at, r.attempt)):
        if rec.phase == phase and rec.outcome != Outcome.interrupted:
            out[rec.batch_size] = rec
    return out


def next_rung(batch_sizes: list[int], records: Iterable[ProbeRecord]) -> Optional[Rung]:
    """The next rung to run, or None when the ladder has its verdict."""
    done = finished(records)
    for bs in sorted(batch_sizes):
        if bs not in done:
            return Rung(bs)
        if done[bs].outcome != Outcome.ok:
            return None
    return None


def describe(rec: ProbeRecord) -> str:
    """One clause on how a probe ended, with the number that matters: 'bs=32 oom_killed at 2.10 GiB under ...'."""
    lim, ev = rec.limits, rec.evidence
    head = f"bs={rec.batch_size} {rec.outcome.value}"
    if rec.outcome in (Outcome.oom_killed, Outcome.child_oom):
        under = f" under a {gib(lim.cap_bytes)} cap" if lim.cap_bytes else " (host out of memory)"
        return f"{head} at {gib(rec.peak_bytes)}{under}"
    if rec.outcome == Outcome.rss_breach:
        sampled = rec.peaks.sampled_pss_bytes if lim.metric == "pss" else rec.peaks.sampled_rss_bytes
        return f"{head} at {gib(sampled)} {lim.metric.upper()} over the {gib(lim.rss_limit_bytes)} soft limit"
    if rec.outcome == Outcome.timeout:
        return f"{head} after {rec.duration_s:.0f} s"
    if rec.outcome in (Outcome.error, Outcome.cuda_oom):
        line = f": {ev.log_line}" if ev.log_line else ""
        return f"{head} (exit {ev.exit_code}{line})"
    if rec.outcome == Outcome.ok:
        return f"bs={rec.batch_size} ok at {gib(rec.peak_bytes)}"
    return head


def verdict(batch_sizes: list[int], records: Iterable[ProbeRecord]) -> Verdict:
    """The pick and its one-sentence reason, from the ladder's finished records."""
    done = finished(records)
    ok: list[int] = []
    for bs in sorted(batch_sizes):
        rec = done.get(bs)
        if rec is None:
            break
        if rec.outcome != Outcome.ok:
            if not ok:
                return Verdict(None, f"no stable rung: {describe(rec)} (the first rung)", EXIT_NO_STABLE, rec)
            return Verdict(ok[-1], f"bs={ok[-1]}: highest ok rung; {describe(rec)}", EXIT_PICK, rec)
        ok.append(bs)
    if not ok:
        return Verdict(None, "no rung has finished yet", EXIT_NO_STABLE)
    if len(ok) == len(batch_sizes):
        return Verdict(ok[-1], f"bs={ok[-1]}: highest ok rung; every rung passed, so the limit lies higher "
                       f"(extend batch_sizes to find it)", EXIT_PICK)
    return Verdict(ok[-1], f"bs={ok[-1]}: highest ok rung so far; the ladder is unfinished", EXIT_PICK)

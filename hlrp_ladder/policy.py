"""The ladder policy: pure functions over probe records. No I/O, no processes, no clock.

1. Search (one-val probes). Linear: rungs ascending, the first non-``ok`` one stops the search. Bisect: the
   first rung, then the last, then the middle of the grid between the highest ``ok`` and the lowest failure
   until they are ``granularity`` apart.
2. Confirm, from the highest ``ok`` rung below the first failure downwards: ``repeats`` one-val probes must
   all pass and leave ``headroom`` under the limit; then, if the spec has a stress section, the stress probe
   must pass, its forecast must fit, and its peak must leave the headroom. The first candidate that holds is
   the pick; each one that does not is rejected with its reason and the next lower one is tried.

``interrupted`` records are not verdicts: that probe is run again on resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from hlrp_ladder.records import Outcome, ProbeRecord
from hlrp_ladder.sizes import gib

EXIT_PICK, EXIT_USAGE, EXIT_NO_STABLE, EXIT_BLOCKED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130
SEARCH_PHASES = ("ladder", "refine")


@dataclass(frozen=True)
class Rung:
    batch_size: int
    phase: str = "ladder"       # ladder | refine | repeat | stress
    repeat: int = 0


@dataclass(frozen=True)
class Plan:
    """What the policy needs from a spec, with sizes already resolved to bytes."""
    batch_sizes: list[int]
    refine: str = "none"
    granularity: int = 4
    repeats: int = 1
    stress: bool = False
    stress_recipe: str = ""          # for the reason sentence, e.g. "220 steps, validation every 50 over 2 batches"
    limit_bytes: Optional[int] = None
    limit_name: str = "cap"
    headroom_bytes: int = 0


@dataclass(frozen=True)
class Verdict:
    pick: Optional[int]
    reason: str
    exit_code: int
    failed: Optional[ProbeRecord] = None
    confirmed_by: Optional[str] = None
    rejected: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------- records
def latest(records: Iterable[ProbeRecord]) -> dict[tuple[str, int, int], ProbeRecord]:
    """The latest finished (not interrupted) record per (phase, batch size, repeat)."""
    out: dict[tuple[str, int, int], ProbeRecord] = {}
    for rec in sorted(records, key=lambda r: (r.started_at, r.attempt)):
        if rec.outcome != Outcome.interrupted:
            out[(rec.phase, rec.batch_size, rec.repeat)] = rec
    return out


def one_val(records: Iterable[ProbeRecord]) -> dict[int, ProbeRecord]:
    """The one-val probe of each batch size (ladder or refine phase)."""
    return {bs: rec for (phase, bs, rep), rec in latest(records).items() if phase in SEARCH_PHASES and rep == 0}


def fit_peak(rec: ProbeRecord) -> int:
    """The peak that must fit under the limit: the cgroup's when a cap applies, else the RSS high-water mark."""
    if rec.limits.cap_bytes is not None and rec.peaks.kernel_bytes is not None:
        return rec.peaks.kernel_bytes
    return max(rec.peaks.sampled_rss_bytes, rec.peaks.vmhwm_bytes or 0, rec.peaks.sampled_pss_bytes or 0)


# ---------------------------------------------------------------------------------------------------- search
@dataclass(frozen=True)
class Search:
    next: Optional[Rung]
    ok: list[int]                    # ok one-val rungs below the first failure, ascending
    first_failure: Optional[ProbeRecord]


def search(plan: Plan, records: Iterable[ProbeRecord]) -> Search:
    done = one_val(records)
    sizes = sorted(plan.batch_sizes)
    ok_of = lambda bs: done[bs].outcome == Outcome.ok  # noqa: E731
    if plan.refine != "bisect" or len(sizes) < 3:
        ok: list[int] = []
        for bs in sizes:
            if bs not in done:
                return Search(Rung(bs), ok, None)
            if not ok_of(bs):
                return Search(None, ok, done[bs])
            ok.append(bs)
        return Search(None, ok, None)
    for bs in (sizes[0], sizes[-1]):
        if bs not in done:
            return Search(Rung(bs), [], None)
        if bs == sizes[0] and not ok_of(bs):
            return Search(None, [], done[bs])
    failures = sorted(bs for bs in done if not ok_of(bs))
    hi = failures[0] if failures else None
    ok = sorted(bs for bs in done if ok_of(bs) and (hi is None or bs < hi))
    if hi is None:
        return Search(None, ok, None)
    lo = ok[-1]
    inside = [bs for bs in sizes if lo < bs < hi]
    if inside and hi - lo > plan.granularity:
        return Search(Rung(inside[(len(inside) - 1) // 2], "refine"), ok, done[hi])
    return Search(None, ok, done[hi])


# ---------------------------------------------------------------------------------------------------- confirm
def describe(rec: ProbeRecord) -> str:
    """One clause on how a probe ended, with the number that matters: 'bs=32 oom_killed at 2.10 GiB under ...'."""
    lim, ev = rec.limits, rec.evidence
    phase = "" if rec.phase in SEARCH_PHASES else f" {rec.phase}" + (f" {rec.repeat}" if rec.repeat else "")
    head = f"bs={rec.batch_size}{phase} {rec.outcome.value}"
    if rec.outcome in (Outcome.oom_killed, Outcome.child_oom):
        under = f" under a {gib(lim.cap_bytes)} cap" if lim.cap_bytes else " (host out of memory)"
        return f"{head} at {gib(rec.peak_bytes)}{under}"
    if rec.outcome == Outcome.rss_breach:
        sampled = rec.peaks.sampled_pss_bytes if lim.metric == "pss" else rec.peaks.sampled_rss_bytes
        return f"{head} at {gib(sampled)} {lim.metric.upper()} over the {gib(lim.rss_limit_bytes)} soft limit"
    if rec.outcome == Outcome.forecast_oom and rec.forecast is not None:
        return f"{head}: {rec.forecast.reason}"
    if rec.outcome == Outcome.timeout:
        return f"{head} after {rec.duration_s:.0f} s"
    if rec.outcome in (Outcome.error, Outcome.cuda_oom):
        text = ev.log_line or ""
        line = f": {text[:117]}..." if len(text) > 120 else (f": {text}" if text else "")
        return f"{head} (exit {ev.exit_code}{line})"
    if rec.outcome == Outcome.ok:
        return f"bs={rec.batch_size}{phase} ok at {gib(fit_peak(rec))}"
    return head


def _headroom_problem(plan: Plan, rec: ProbeRecord) -> Optional[str]:
    if plan.limit_bytes is None or not plan.headroom_bytes:
        return None
    peak = fit_peak(rec)
    if peak + plan.headroom_bytes <= plan.limit_bytes:
        return None
    what = "" if rec.phase in SEARCH_PHASES else f" {rec.phase}"
    return (f"bs={rec.batch_size}{what} peak {gib(peak)} leaves {gib(max(0, plan.limit_bytes - peak))} free under "
            f"the {gib(plan.limit_bytes)} {plan.limit_name}, less than the {gib(plan.headroom_bytes)} headroom")


@dataclass(frozen=True)
class Confirmation:
    next: Optional[Rung]
    pick: Optional[int]
    rejected: list[str]
    evidence: Optional[ProbeRecord] = None   # the record that confirmed the pick


def confirm(plan: Plan, records: Iterable[ProbeRecord], candidates: list[int]) -> Confirmation:
    done = latest(records)
    rejected: list[str] = []
    for bs in sorted(candidates, reverse=True):
        tries = [done[("ladder", bs, 0)] if ("ladder", bs, 0) in done else done[("refine", bs, 0)]]
        missing = next((k for k in range(2, plan.repeats + 1) if ("repeat", bs, k) not in done), None)
        if missing is not None:
            return Confirmation(Rung(bs, "repeat", missing), None, rejected)
        tries += [done[("repeat", bs, k)] for k in range(2, plan.repeats + 1)]
        bad = next((r for r in tries if r.outcome != Outcome.ok), None)
        if bad is not None:
            rejected.append(describe(bad))
            continue
        worst = max(tries, key=fit_peak)
        problem = _headroom_problem(plan, worst)
        if problem:
            rejected.append(problem)
            continue
        if not plan.stress:
            return Confirmation(None, bs, rejected, worst)
        stress = done.get(("stress", bs, 0))
        if stress is None:
            return Confirmation(Rung(bs, "stress"), None, rejected)
        if stress.outcome != Outcome.ok:
            rejected.append(describe(stress))
            continue
        problem = _headroom_problem(plan, stress)
        if problem:
            rejected.append(problem)
            continue
        return Confirmation(None, bs, rejected, stress)
    return Confirmation(None, None, rejected)


# ---------------------------------------------------------------------------------------------------- the two calls
def next_rung(plan: Plan, records: Iterable[ProbeRecord]) -> Optional[Rung]:
    """The next probe to run, or None when the run has its verdict."""
    records = list(records)
    found = search(plan, records)
    if found.next is not None:
        return found.next
    return confirm(plan, records, found.ok).next


def verdict(plan: Plan, records: Iterable[ProbeRecord]) -> Verdict:
    """The pick and the sentences saying why, and which phase confirmed it."""
    records = list(records)
    found = search(plan, records)
    if found.next is not None:
        return Verdict(None, f"unfinished: bs={found.next.batch_size} ({found.next.phase}) has not run",
                       EXIT_NO_STABLE)
    failure = f"; {describe(found.first_failure)}" if found.first_failure is not None else ""
    if not found.ok:
        first = found.first_failure
        what = describe(first) if first is not None else "nothing ran"
        return Verdict(None, f"no stable rung: {what} (the first rung)", EXIT_NO_STABLE, first)
    conf = confirm(plan, records, found.ok)
    if conf.next is not None:
        return Verdict(None, f"unfinished: bs={conf.next.batch_size} ({conf.next.phase}) has not run",
                       EXIT_NO_STABLE)
    rejected = f" Rejected: {'; '.join(conf.rejected)}." if conf.rejected else ""
    if conf.pick is None:
        return Verdict(None, f"no stable rung: every candidate was rejected.{rejected}", EXIT_NO_STABLE,
                       found.first_failure, rejected=conf.rejected)
    top = found.ok[-1]
    if found.first_failure is None and top == max(plan.batch_sizes):
        ceiling = "every rung passed, so the limit lies higher (extend batch_sizes to find it)"
        if conf.pick != top:
            ceiling = f"every rung up to bs={top} passed one-val"
    elif conf.pick == top:
        ceiling = f"highest ok rung{failure}"
    else:
        ceiling = f"the highest ok rung was bs={top}{failure}"
    if plan.stress:
        phase = "stress"
        confirmed = (f"Confirmed by the stress phase ({plan.stress_recipe}): "
                     f"{describe(conf.evidence)}" + _forecast_clause(conf.evidence) + ".")
    else:
        phase = "repeat" if plan.repeats > 1 else "ladder"
        confirmed = ("Confirmed by the one-val ladder" + (f" and {plan.repeats} repeats" if plan.repeats > 1 else "")
                     + " only: the spec has no stress section.")
    reason = f"bs={conf.pick}: {ceiling}.{rejected} {confirmed}"
    return Verdict(conf.pick, reason, EXIT_PICK, found.first_failure, phase, conf.rejected)


def _forecast_clause(rec: Optional[ProbeRecord]) -> str:
    if rec is None or rec.forecast is None:
        return ""
    return f", {rec.forecast.reason}"

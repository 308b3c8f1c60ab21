"""The policy's two calls, pure functions over probe records: ``next_rung`` (the probe to run next, or None when
the run has its verdict) and ``verdict`` (the pick and the sentences saying why, or why there is none).

Only a *memory verdict* (``oom_killed``, ``child_oom``, ``rss_breach``, ``gpu_breach``, ``cuda_oom``, ``forecast_oom``) moves
the search or rejects a candidate. An *inconclusive* probe (``error``, ``timeout``) says nothing about memory:
it is retried (``retries``), and still inconclusive it ends the run as ``inconclusive`` (exit 5) with the
reason. ``interrupted`` records are not verdicts: that probe is run again on resume.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

from hlrp_ladder.records import SEARCH_PHASES, Outcome, ProbeRecord
from hlrp_ladder.search.boundary import search
from hlrp_ladder.search.confirm import candidate, confirm
from hlrp_ladder.search.state import (EXIT_INCONCLUSIVE, EXIT_NO_STABLE, EXIT_PICK, NOT_RUN, Plan, Rung, Verdict,
                                      attempts, rung_key)
from hlrp_ladder.search.words import probe_clause


def replay(plan: Plan, records: Iterable[ProbeRecord]) -> tuple[list[ProbeRecord], Optional[Rung]]:
    """The records the sequential ladder uses, in its own order, and the rung it waits for (None: it has its
    verdict). A record is used only when the sequential ladder asks for that probe, so probes run ahead of
    time in parallel slots cannot change the pick."""
    finished = {}
    for rec in sorted(records, key=lambda r: (r.started_at, r.attempt)):
        if rec.outcome not in NOT_RUN:
            finished[rung_key(rec)] = rec
    used: list[ProbeRecord] = []
    while True:
        rung = next_rung(plan, used)
        if rung is None or rung_key(rung) not in finished:
            return used, rung
        used.append(finished[rung_key(rung)])


def next_rung(plan: Plan, records: Iterable[ProbeRecord]) -> Optional[Rung]:
    """The next probe to run, or None when the run has its verdict."""
    tries = attempts(records)
    found = search(plan, tries)
    if found.next is not None or found.inconclusive is not None or not found.ok:
        return found.next
    return confirm(plan, tries, found).next


def verdict(plan: Plan, records: Iterable[ProbeRecord]) -> Verdict:
    """The pick and the sentences saying why, and which phase confirmed it; or why there is none. Only the
    records the sequential ladder uses count (``replay``); a probe run ahead of time that it never asked for
    is named when it contradicts the verdict (a pass above the first failure: a non-monotonic result)."""
    records = list(records)
    used, frontier = replay(plan, records)
    if frontier is not None:
        return _unfinished(frontier)
    found = _verdict(plan, used)
    unused = [r for r in records if r not in used and r.outcome == Outcome.ok and r.phase in SEARCH_PHASES]
    failure = found.failed if found.failed is not None and found.failed.phase in SEARCH_PHASES else None
    odd = sorted({r.batch_size for r in unused if failure is not None and r.batch_size > failure.batch_size})
    if odd:
        note = (f" Not used: bs={', bs='.join(map(str, odd))} passed one-val above the failure at "
                f"bs={failure.batch_size} (a non-monotonic result: noise, or memory that is not monotonic in the "
                f"batch size).")
        found = dataclasses.replace(found, reason=found.reason + note)
    return found


def _verdict(plan: Plan, records: list[ProbeRecord]) -> Verdict:
    tries = attempts(records)
    found = search(plan, tries)
    if found.next is not None:
        return _unfinished(found.next)
    if found.inconclusive is not None:
        passed = found.ok[-1] if found.ok else None
        return _inconclusive(plan, probe_clause(found.inconclusive), found.inconclusive, passed,
                             f"bs={passed} passed" if passed else "no rung passed")
    failure = f"; {probe_clause(found.first_failure)}" if found.first_failure is not None else ""
    if not found.ok:
        first = found.first_failure
        what = probe_clause(first) if first is not None else "nothing ran"
        return Verdict(None, f"no stable rung: {what} (the first rung)", EXIT_NO_STABLE, first)
    conf = confirm(plan, tries, found)
    if conf.next is not None:
        return _unfinished(conf.next)
    if conf.inconclusive is not None:
        stuck = conf.inconclusive.record
        below = [bs for bs in sorted(plan.batch_sizes) if bs < stuck.batch_size
                 and candidate(plan, tries, bs).status == "accepted"]
        if below:
            passed, said = below[-1], f"bs={below[-1]} passed every check"
        elif stuck.phase not in SEARCH_PHASES:  # a repeat or stress probe: its one-val probe passed
            passed, said = stuck.batch_size, f"bs={stuck.batch_size} passed its one-val probe only"
        else:
            passed, said = None, "no candidate passed every check"
        return _inconclusive(plan, conf.inconclusive.reason, stuck, passed, said)
    rejected = f" Rejected: {'; '.join(conf.rejected)}." if conf.rejected else ""
    if conf.pick is None:
        return Verdict(None, f"no stable rung: every candidate was rejected.{rejected}", EXIT_NO_STABLE,
                       found.first_failure, rejected=conf.rejected)
    top = found.ok[-1]
    if found.first_failure is None and top == max(plan.batch_sizes) and not found.predicted:
        ceiling = "every rung passed, so the limit lies higher (extend batch_sizes to find it)"
        if conf.pick != top:
            ceiling = f"every rung up to bs={top} passed one-val"
    elif conf.pick == top and found.predicted:
        ceiling = f"highest ok rung; {found.predicted}"
    elif conf.pick == top:
        ceiling = f"highest ok rung{failure}"
    else:
        ceiling = f"the highest ok rung was bs={top}{failure}"
    if plan.stress:
        phase = "stress"
        confirmed = (f"Confirmed by the stress phase ({plan.stress_recipe}): "
                     f"{probe_clause(conf.evidence)}" + _forecast_clause(conf.evidence) + ".")
    else:
        phase = "repeat" if plan.repeats > 1 else "ladder"
        confirmed = ("Confirmed by the one-val ladder" + (f" and {plan.repeats} repeats" if plan.repeats > 1 else "")
                     + " only: the spec has no stress section.")
    reason = f"bs={conf.pick}: {ceiling}.{rejected} {confirmed}"
    return Verdict(conf.pick, reason, EXIT_PICK, found.first_failure, phase, conf.rejected)


def _unfinished(rung: Rung) -> Verdict:
    return Verdict(None, f"unfinished: bs={rung.batch_size} ({rung.phase}) has not run", EXIT_NO_STABLE,
                   status="unfinished")


def _inconclusive(plan: Plan, what: str, rec: ProbeRecord, passed: Optional[int], said: str) -> Verdict:
    """'bs=16 error (exit 1: ValueError: ...), on its retry too: not a memory verdict; bs=12 passed. Fix ...'"""
    if rec.outcome.is_inconclusive:
        again = {0: "", 1: ", on its retry too"}.get(plan.retries, f", on its {plan.retries} retries too")
        fix = ("Find why it ran past timeout_s (or raise it)" if rec.outcome == Outcome.timeout else "Fix the error")
        text = f"{what}{again}: not a memory verdict; {said}. {fix} and --resume"
    else:  # it passed, but the forecast the spec asks for could not be made
        text = (f"{what}: no verdict on the long run; {said}. Give the stress phase validations the monitor can "
                f"time (see the forecast reason) in a new run")
    if passed is not None:
        text += f", or launch-overnight --pick {passed} to accept it"
    return Verdict(None, text, EXIT_INCONCLUSIVE, rec, status="inconclusive")


def _forecast_clause(rec: Optional[ProbeRecord]) -> str:
    if rec is None:
        return ""
    return "".join(f", {fc.reason}" for fc in (rec.forecast, rec.gpu_forecast) if fc is not None)

"""Confirming a pick. The highest ok rung below the first failure is the first candidate: ``repeats`` one-val
probes must all pass and leave ``headroom`` under the limit; then, if the spec has a stress section, the stress
probe must pass, its forecast must fit, and its peak must leave the headroom. A candidate that fails is
rejected (said why). After a rejection the next candidate is the largest grid size below it (its one-val probe
run first if the search skipped it) or, when that needs fewer probes, the middle of the grid sizes still
undecided; no grid size below a rejection is ever skipped, so the pick is the one a linear ladder makes. Pure."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from hlrp_ladder.records import SEARCH_PHASES, Phase, ProbeRecord
from hlrp_ladder.search.boundary import Search
from hlrp_ladder.search.state import Key, Plan, Rung, fit_peak, gpu_headroom, gpu_peak, standing
from hlrp_ladder.search.words import probe_clause
from hlrp_ladder.util.sizes import gib


def _headroom_problem(plan: Plan, rec: ProbeRecord) -> Optional[str]:
    """Why a passing record leaves too little free, on the host or on its busiest GPU; None when it leaves enough."""
    what = "" if rec.phase in SEARCH_PHASES else f" {rec.phase}"
    gpu_limit, gpu = rec.limits.gpu_fit_bytes, gpu_peak(rec)
    if gpu_limit is not None and gpu is not None:
        room = gpu_headroom(plan, rec)
        if room and gpu + room > gpu_limit:
            return (f"bs={rec.batch_size}{what} GPU peak {gib(gpu)} leaves {gib(max(0, gpu_limit - gpu))} free under "
                    f"the {gib(gpu_limit)} GPU limit, less than the {gib(room)} GPU headroom")
    if plan.limit_bytes is None or not plan.headroom_bytes:
        return None
    peak = fit_peak(rec)
    if peak + plan.headroom_bytes <= plan.limit_bytes:
        return None
    return (f"bs={rec.batch_size}{what} peak {gib(peak)} leaves {gib(max(0, plan.limit_bytes - peak))} free under "
            f"the {gib(plan.limit_bytes)} {plan.limit_name}, less than the {gib(plan.headroom_bytes)} headroom")


def _unjudged(rec: ProbeRecord) -> Optional[str]:
    """Why a passing record cannot confirm a pick: it ran on a GPU whose memory could not be read (a pick must
    never rest on host memory alone there)."""
    if rec.gpu_judged and gpu_peak(rec) is None:
        return (f"{probe_clause(rec)}, but its GPU memory could not be read "
                f"({rec.peaks.gpu_source or 'no GPU sample'}): no verdict on the GPU")
    return None


@dataclass(frozen=True)
class Candidate:
    """Where one candidate pick stands: accepted | rejected | inconclusive | pending (``next`` runs next)."""
    status: str
    next: Optional[Rung] = None
    reason: str = ""                          # why rejected, or why inconclusive
    record: Optional[ProbeRecord] = None      # accepted: the confirming record; else the deciding one


def candidate(plan: Plan, tries: dict[Key, list[ProbeRecord]], bs: int) -> Candidate:
    """Every check a pick must pass, in order: one-val and repeats, their headroom, stress, its headroom and
    its forecast."""
    one_vals: list[ProbeRecord] = []
    chain = [(("search", bs, 0), Rung(bs, Phase.ladder if plan.refine == "none" else Phase.refine))]
    chain += [(("repeat", bs, k), Rung(bs, Phase.repeat, k)) for k in range(2, plan.repeats + 1)]
    if plan.stress:
        chain.append((("stress", bs, 0), Rung(bs, Phase.stress)))
    for key, rung in chain:
        st = standing(plan, tries.get(key, []))
        if st.state == "missing":
            return Candidate("pending", rung)
        if st.state == "retry":
            return Candidate("pending", Rung(bs, st.record.phase, rung.repeat, st.retry))
        if st.state == "inconclusive":
            return Candidate("inconclusive", reason=probe_clause(st.record), record=st.record)
        if st.state == "memory":
            return Candidate("rejected", reason=probe_clause(st.record), record=st.record)
        unjudged = _unjudged(st.record)
        if unjudged:
            return Candidate("inconclusive", reason=unjudged, record=st.record)
        if key[0] == "stress":
            problem = _headroom_problem(plan, st.record)
            if problem:
                return Candidate("rejected", reason=problem, record=st.record)
            for fc, what in ((st.record.forecast, ""), (st.record.gpu_forecast, "GPU ")):
                if what and not st.record.gpu_judged:
                    continue
                if plan.forecast_required and (fc is None or fc.fits is None):
                    why = fc.reason if fc is not None else f"no {what}growth forecast was made"
                    return Candidate("inconclusive", reason=f"{probe_clause(st.record)}, but {why}", record=st.record)
            return Candidate("accepted", record=st.record)
        one_vals.append(st.record)
        if len(one_vals) == plan.repeats:
            # Every repeat must leave the headroom, on the host and on the GPU (their worst need not be one record).
            for rec in sorted(one_vals, key=fit_peak, reverse=True):
                problem = _headroom_problem(plan, rec)
                if problem:
                    return Candidate("rejected", reason=problem, record=rec)
            if not plan.stress:
                return Candidate("accepted", record=max(one_vals, key=fit_peak))
    raise AssertionError("unreachable: the chain ends in an accepted candidate")


@dataclass(frozen=True)
class Confirmation:
    next: Optional[Rung]
    pick: Optional[int]
    rejected: list[str]
    evidence: Optional[ProbeRecord] = None   # the record that confirmed the pick
    inconclusive: Optional[Candidate] = None


def confirm(plan: Plan, tries: dict[Key, list[ProbeRecord]], found: Search) -> Confirmation:
    """The pick among the ok rungs of the search, from the top down: the next confirming probe to run, or the
    pick (or why there is none)."""
    top = found.ok[-1]
    grid = [bs for bs in sorted(plan.batch_sizes) if bs <= top]
    cands = {bs: candidate(plan, tries, bs) for bs in grid}
    rejected = [cands[bs].reason for bs in sorted(grid, reverse=True) if cands[bs].status == "rejected"]
    stuck = next((cands[bs] for bs in reversed(grid) if cands[bs].status == "inconclusive"), None)
    if stuck is not None:
        return Confirmation(None, None, rejected, inconclusive=stuck)
    accepted = [bs for bs in grid if cands[bs].status == "accepted"]
    lo = accepted[-1] if accepted else None
    hi = min((bs for bs in grid if cands[bs].status == "rejected" and (lo is None or bs > lo)), default=None)
    open_ = [bs for bs in grid if cands[bs].status == "pending" and (lo is None or bs > lo)
             and (hi is None or bs < hi)]
    if not open_:
        return Confirmation(None, lo, rejected, cands[lo].record if lo is not None else None)
    choice = open_[-1]  # the largest undecided size below the lowest rejection: what a linear ladder tries
    if hi is not None and plan.refine != "none":
        # With refine: bisect, fewer candidates than walking down one size at a time. Until a candidate is
        # accepted, gallop: after m rejections skip 2^(m-1) - 1 sizes (the stress limit is usually a rung or
        # two below the one-val one, where this costs what the walk costs). Once one is accepted below the
        # lowest rejection, bisect the sizes between them (from 3 on: ceil(log2(n + 1)) < n). Every size between
        # the pick and the rejection above it is decided before the pick, so it is the linear ladder's pick.
        # The choice depends only on which sizes are decided, so a candidate stays chosen until it is decided.
        if lo is None:
            misses = sum(1 for bs in grid if cands[bs].status == "rejected")
            choice = open_[max(0, len(open_) - 2 ** (misses - 1))]
        elif math.ceil(math.log2(len(open_) + 1)) < len(open_):
            choice = open_[(len(open_) - 1) // 2]
    return Confirmation(cands[choice].next, None, rejected)

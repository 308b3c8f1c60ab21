"""The search for the limit with one-val probes: linear (rungs ascending, the first memory failure stops it),
bisect (the first rung, the last, then the middle of the grid between the highest ok and the lowest failure
until they are ``granularity`` apart), or model (a line through the passing peaks says where to look). Pure."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hlrp_ladder.records import Phase, ProbeRecord
from hlrp_ladder.search import memory_model
from hlrp_ladder.search.state import Key, Plan, Rung, Standing, fit_peak, standing
from hlrp_ladder.util.sizes import gib


@dataclass(frozen=True)
class Search:
    next: Optional[Rung]
    ok: list[int]                    # ok one-val rungs below the first failure, ascending
    first_failure: Optional[ProbeRecord]
    inconclusive: Optional[ProbeRecord] = None
    predicted: str = ""              # refine: model: the rung above the pick left unprobed, and why


def search(plan: Plan, tries: dict[Key, list[ProbeRecord]]) -> Search:
    """Where the one-val probes put the limit: the next search probe to run, or the ok rungs below the first
    memory failure (or the probe that left the search inconclusive)."""
    sizes = sorted(plan.batch_sizes)
    states = {bs: standing(plan, tries.get(("search", bs, 0), [])) for bs in sizes}
    again = lambda bs: Rung(bs, states[bs].record.phase, 0, states[bs].retry)  # noqa: E731
    if plan.refine == "none" or len(sizes) < 3:
        ok: list[int] = []
        for bs in sizes:
            st = states[bs]
            if st.state == "missing":
                return Search(Rung(bs), ok, None)
            if st.state == "retry":
                return Search(again(bs), ok, None)
            if st.state == "inconclusive":
                return Search(None, ok, None, st.record)
            if st.state == "memory":
                return Search(None, ok, st.record)
            ok.append(bs)
        return Search(None, ok, None)
    # Bisect (and model). A probe that must be retried is retried before anything else is decided: an error at
    # the top rung must not send the search down.
    for bs in sizes:
        if states[bs].state == "retry":
            return Search(again(bs), [], None)
    failures = sorted(bs for bs in sizes if states[bs].state == "memory")
    hi = failures[0] if failures else None
    ok = sorted(bs for bs in sizes if states[bs].state == "ok" and (hi is None or bs < hi))
    stuck = next((states[bs].record for bs in sizes if states[bs].state == "inconclusive"), None)
    if stuck is not None:
        return Search(None, [bs for bs in ok if bs < stuck.batch_size], None, stuck)
    if plan.refine == "model" and plan.limit_bytes is not None:
        found = _model_search(plan, sizes, states, failures, ok)
        if found is not None:
            return found
    for bs in (sizes[0], sizes[-1]):
        if states[bs].state == "missing":
            return Search(Rung(bs), [], None)
        if bs == sizes[0] and states[bs].state == "memory":
            return Search(None, [], states[bs].record)
    if hi is None:
        return Search(None, ok, None)
    lo = ok[-1]
    inside = [bs for bs in sizes if lo < bs < hi]
    if inside and hi - lo > plan.granularity:
        return Search(Rung(inside[(len(inside) - 1) // 2], Phase.refine), ok, states[hi].record)
    return Search(None, ok, states[hi].record)


def _model_search(plan: Plan, sizes: list[int], states: dict[int, Standing], failures: list[int],
                  ok: list[int]) -> Optional[Search]:
    """refine: model. The first two rungs, then a line through the passing peaks (``memory_model``): probe the
    largest grid size it puts under the limit less its margin, then the one above — unless three or more rungs
    lie on the line and it puts that one clearly over: then it is left unprobed, and the verdict says so. None
    when the line is no good (memory that does not grow, or points off the line): bisection decides then."""
    hi = failures[0] if failures else None
    hi_rec = states[hi].record if hi is not None else None
    for bs in sizes[:2]:
        if states[bs].state == "missing" and (hi is None or bs < hi):
            return Search(Rung(bs), ok, hi_rec)
    if not ok or (hi is not None and not [bs for bs in sizes if ok[-1] < bs < hi]):
        return Search(None, ok, hi_rec)  # no stable rung, or the boundary found
    below = [bs for bs in sizes if hi is None or bs < hi]
    budget = plan.limit_bytes - plan.headroom_bytes
    line = memory_model.fit([(bs, fit_peak(states[bs].record)) for bs in ok])
    if line is None or not line.good(budget):
        return None
    margin = line.margin(budget)
    if any(line.predict(bs) + margin <= budget for bs in failures):
        return None  # a rung the line put clearly under the limit failed: the line is wrong (a knee)
    target = max(memory_model.largest_fitting(line, below, budget, margin) or ok[-1], ok[-1])
    if states[target].state == "missing":
        return Search(Rung(target, Phase.refine), ok, hi_rec)
    above = next((bs for bs in below if bs > target), None)
    if above is None:
        return Search(None, ok, hi_rec)  # the boundary is found (or the top rung passed)
    if states[above].state == "missing":
        predicted = line.predict(above)
        if line.points >= 3 and predicted > budget + margin:
            return Search(None, ok, hi_rec, predicted=(
                f"bs={above} was not probed: the memory model ({line.formula()}) puts it at "
                f"{gib(predicted)}, over the {gib(budget)} {plan.limit_name}" +
                (" less headroom" if plan.headroom_bytes else "") + f" by more than its {gib(margin)} margin"))
        return Search(Rung(above, Phase.refine), ok, hi_rec)
    return None  # the probed rungs disagree with the line: bisection

"""The search for the limit with one-val probes: linear (rungs ascending, the first memory failure stops it),
bisect (the first rung, the last, then the middle of the grid between the highest ok and the lowest failure
until they are ``granularity`` apart), or model (a line through the passing peaks says where to look). Pure."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hlrp_ladder.records import Phase, ProbeRecord
from hlrp_ladder.search import memory_model
from hlrp_ladder.search.state import Key, Plan, Rung, Standing, failed_on, fit_peak, gpu_headroom, gpu_peak, standing
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
    if plan.refine == "model":
        found = _model_search(plan, sizes, states, failures, ok)
        if found is not None:
            return found
    for bs in (sizes[0], sizes[-1]):
        if bs == sizes[-1] and hi is not None:
            continue  # the top rung is probed to find a failure; one is known already (a model that failed)
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


@dataclass(frozen=True)
class Resource:
    """One memory a rung's peak must fit in, for ``refine: model``: its line through the passing peaks and its
    budget (the limit less the headroom)."""
    name: str                        # "host" | "gpu"
    line: memory_model.LineFit
    budget: int
    limit_words: str                 # "the 1.25 GiB cap less headroom"


def resources(plan: Plan, ok_records: list[ProbeRecord]) -> tuple[list[Resource], bool]:
    """Each memory the passing rungs can be fitted in, and whether every one that may bind has a usable line.
    A memory whose line is no good (it does not grow with the batch size, or its points scatter) is left out
    when it stays far below its budget (under half of it: it cannot be what binds on this grid); near its
    budget it makes the model unusable (False: bisection decides)."""
    out, usable = [], True
    candidates = []
    if plan.limit_bytes is not None:
        words = f"the {gib(plan.limit_bytes)} {plan.limit_name}" + (" less headroom" if plan.headroom_bytes else "")
        candidates.append(("host", [(r.batch_size, fit_peak(r)) for r in ok_records],
                           plan.limit_bytes - plan.headroom_bytes, words))
    gpu = [r for r in ok_records if r.limits.gpu_fit_bytes is not None and gpu_peak(r) is not None]
    if gpu and len(gpu) == len(ok_records):
        limit = min(r.limits.gpu_fit_bytes for r in gpu)
        room = max(gpu_headroom(plan, r) for r in gpu)
        candidates.append(("gpu", [(r.batch_size, gpu_peak(r)) for r in gpu], limit - room,
                           f"the {gib(limit, 1)} GPU limit" + (" less headroom" if room else "")))
    for name, points, budget, words in candidates:
        line = memory_model.fit(points)
        if line is not None and line.good(budget):
            out.append(Resource(name, line, budget, words))
        elif max((p for _, p in points), default=0) >= budget / 2:
            usable = False
    return out, usable and bool(out)


def _model_search(plan: Plan, sizes: list[int], states: dict[int, Standing], failures: list[int],
                  ok: list[int]) -> Optional[Search]:
    """refine: model. The first two rungs, then a line through the passing peaks per memory (host, and the GPU
    where it was judged; ``memory_model``): probe the largest grid size every line puts under its limit less its
    margin, then the one above — unless three or more rungs lie on the binding line and it puts that one clearly
    over: then it is left unprobed, and the verdict says so. None when a line that may bind is no good (memory
    that does not grow, or points off the line): bisection decides then."""
    hi = failures[0] if failures else None
    hi_rec = states[hi].record if hi is not None else None
    for bs in sizes[:2]:
        if states[bs].state == "missing" and (hi is None or bs < hi):
            return Search(Rung(bs), ok, hi_rec)
    if not ok or (hi is not None and not [bs for bs in sizes if ok[-1] < bs < hi]):
        return Search(None, ok, hi_rec)  # no stable rung, or the boundary found
    below = [bs for bs in sizes if hi is None or bs < hi]
    found, usable = resources(plan, [states[bs].record for bs in ok])
    if not usable:
        return None
    for res in found:
        margin = res.line.margin(res.budget)
        if any(res.line.predict(bs) + margin <= res.budget for bs in failures
               if failed_on(states[bs].record) == res.name):
            return None  # a rung the line put clearly under its limit failed on that memory: a knee
    targets = {res.name: memory_model.largest_fitting(res.line, below, res.budget, res.line.margin(res.budget))
               or ok[-1] for res in found}
    binding = min(found, key=lambda res: targets[res.name])
    target = max(targets[binding.name], ok[-1])
    if states[target].state == "missing":
        return Search(Rung(target, Phase.refine), ok, hi_rec)
    above = next((bs for bs in below if bs > target), None)
    if above is None:
        return Search(None, ok, hi_rec)  # the boundary is found (or the top rung passed)
    if states[above].state == "missing":
        line, budget, margin = binding.line, binding.budget, binding.line.margin(binding.budget)
        predicted = line.predict(above)
        if line.points >= 3 and predicted > budget + margin:
            gpu = "GPU " if binding.name == "gpu" else ""
            return Search(None, ok, hi_rec, predicted=(
                f"bs={above} was not probed: the {gpu}memory model ({line.formula()}) puts it at "
                f"{gib(predicted)}, over {binding.limit_words} by more than its {gib(margin)} margin"))
        return Search(Rung(above, Phase.refine), ok, hi_rec)
    return None  # the probed rungs disagree with the line: bisection

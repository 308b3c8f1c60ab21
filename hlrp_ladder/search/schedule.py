"""Which probes to run in parallel slots, and which running ones to cancel: pure, over the sequential policy.

The pick must be the one the sequential ladder makes. So the sequential policy is never changed: the verdict
replays it (``verdict.replay``), consuming a record only when the sequential ladder would have asked for that
probe, in its order. Parallel slots only *speculate*: they run, ahead of time, the probes the sequential ladder
is likely to ask for next. The rung the replay waits for (the frontier) always runs first; the other slots go
to the most likely futures, found by exploring both outcomes of every undecided probe — an ok one-val probe
leads up the ladder, a failing one to the stress probe of the candidate below it (so the stress phase overlaps
the one-val ladder) — weighted by how likely that future is. A speculative result the replay never asks for is
not used: a rung
above the first failure that passed is a non-monotonic result, said so in the verdict. Running probes no future
can use (above the first failure, of a rejected candidate, or after the verdict) are cancelled.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from itertools import count
from typing import Optional

from hlrp_ladder.records import SEARCH_PHASES, Evidence, Forecast, Limits, Outcome, Peaks, Phase, ProbeRecord
from hlrp_ladder.search.boundary import search
from hlrp_ladder.search.confirm import candidate
from hlrp_ladder.search.state import Plan, Rung, attempts, rung_key
from hlrp_ladder.search.decide import next_rung, replay

P_OK = {"one-val": 0.7, "stress": 0.6}   # how likely an undecided probe passes, for the speculation's weights
EXPLORE = 200                            # outcome-tree nodes explored per decision


@dataclass(frozen=True)
class Schedule:
    start: list[Rung] = field(default_factory=list)   # to submit now, best first
    cancel: list[Rung] = field(default_factory=list)  # running, and no future of the ladder uses them


def _hypothetical(rung: Rung, ok: bool) -> ProbeRecord:
    """A made-up record for exploring a future: passes with nothing to say, or fails with a memory verdict."""
    rec = ProbeRecord(batch_size=rung.batch_size, phase=rung.phase, repeat=rung.repeat, retry=rung.retry,
                      folder="?", outcome=Outcome.ok if ok else Outcome.oom_killed, evidence=Evidence(),
                      peaks=Peaks(), limits=Limits(), started_at=float("inf"), ended_at=float("inf"), argv=[])
    if ok and rung.phase == Phase.stress:
        rec.forecast = Forecast(kind="plateau", domain="rss", fits=True)
    return rec


def _value(plan: Plan, rung: Rung, weight: float) -> float:
    # How likely the ladder needs it. A slot's worth is its share of the futures, not the length of what it runs
    # (weighting by length filled the slots with long stress probes of unlikely futures: measured on every pair
    # of limits over 8..64, 2 slots took 68 % of the sequential wall time that way, 60 % like this). Among equally
    # likely ones the stress probe goes first: started early, it saves the most.
    return weight * (1.0 + 1e-3 * (rung.phase == "stress"))


def schedule(plan: Plan, records: list[ProbeRecord], running: list[Rung], slots: int) -> Schedule:
    """What to start in the free slots (``slots`` in all, ``running`` busy) and what to cancel."""
    used, frontier = replay(plan, records)
    cancel = useless(plan, used, frontier, running)
    busy = {rung_key(r) for r in running if r not in cancel}
    free = slots - len(busy)
    if frontier is None or free <= 0:
        return Schedule([], cancel)
    finished = {rung_key(r): r for r in records if r.outcome not in (Outcome.interrupted, Outcome.cancelled)}
    start: list[Rung] = []
    if rung_key(frontier) not in busy:
        start.append(frontier)
    if len(start) < free:
        chosen = {rung_key(r) for r in start} | busy
        start += _speculate(plan, used, finished, chosen, free - len(start))
    return Schedule(start, cancel)


def _speculate(plan: Plan, used: list[ProbeRecord], finished: dict, chosen: set, want: int) -> list[Rung]:
    """The ``want`` most valuable probes of the likely futures, none of them in ``chosen``."""
    tick = count()
    heap: list = [(-1.0, next(tick), list(used))]
    found: dict = {}
    for _ in range(EXPLORE):
        if not heap:
            break
        neg_weight, _, history = heapq.heappop(heap)
        weight = -neg_weight
        rung = next_rung(plan, history)
        while rung is not None and rung_key(rung) in finished:  # a result already there: no branching
            history = history + [finished[rung_key(rung)]]
            rung = next_rung(plan, history)
        if rung is None:
            continue
        key = rung_key(rung)
        if key not in chosen:
            value = _value(plan, rung, weight)
            if value > found.get(key, (0.0, rung))[0]:
                found[key] = (value, rung)
        p_ok = P_OK["stress" if rung.phase == "stress" else "one-val"]
        for ok, p in ((True, p_ok), (False, 1 - p_ok)):
            heapq.heappush(heap, (-weight * p, next(tick), history + [_hypothetical(rung, ok)]))
    best = sorted(found.values(), key=lambda item: -item[0])
    return [rung for _, rung in best[:want]]


def useless(plan: Plan, used: list[ProbeRecord], frontier: Optional[Rung], running: list[Rung]) -> list[Rung]:
    """Running probes that no future of the ladder can use."""
    if frontier is None:
        return list(running)  # the verdict is in
    tries = attempts(used)
    found = search(plan, tries)
    ceiling = found.first_failure.batch_size if found.first_failure is not None else None
    out = []
    for rung in running:
        if ceiling is not None and rung.batch_size >= ceiling:
            out.append(rung)  # above the first failure: neither the search nor the confirm phase goes there
        elif found.next is None and found.inconclusive is None and found.ok and \
                rung.phase not in SEARCH_PHASES and candidate(plan, tries, rung.batch_size).status == "rejected":
            out.append(rung)  # a candidate already rejected: its other probes decide nothing
    return out

"""The ladder policy: pure functions over probe records. No I/O, no processes, no clock.

1. Search (one-val probes). Linear: rungs ascending, the first memory failure stops the search. Bisect: the
   first rung, then the last, then the middle of the grid between the highest ``ok`` and the lowest failure
   until they are ``granularity`` apart.
2. Confirm. The highest ``ok`` rung below the first failure is the first candidate: ``repeats`` one-val probes
   must all pass and leave ``headroom`` under the limit; then, if the spec has a stress section, the stress
   probe must pass, its forecast must fit, and its peak must leave the headroom. A candidate that fails is
   rejected (said why). After a rejection the next candidate is the largest grid size below it (its one-val
   probe run first if the search skipped it) or, when that needs fewer probes, the middle of the grid sizes
   still undecided; no grid size below a rejection is ever skipped, so the pick is the one a linear ladder
   makes.

Only a *memory verdict* (``oom_killed``, ``child_oom``, ``rss_breach``, ``cuda_oom``, ``forecast_oom``) moves
the search or rejects a candidate. An *inconclusive* probe (``error``, ``timeout``) says nothing about memory:
it is retried (``retries``), and still inconclusive it ends the run as ``inconclusive`` (exit 5) with the
reason. ``interrupted`` records are not verdicts: that probe is run again on resume.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Iterable, Optional

from hlrp_ladder.records import Outcome, ProbeRecord
from hlrp_ladder.sizes import gib

EXIT_PICK, EXIT_USAGE, EXIT_NO_STABLE, EXIT_BLOCKED, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED = 0, 2, 3, 4, 5, 130
SEARCH_PHASES = ("ladder", "refine")


@dataclass(frozen=True)
class Rung:
    batch_size: int
    phase: str = "ladder"       # ladder | refine | repeat | stress
    repeat: int = 0
    retry: int = 0              # 1.. for the retries of an inconclusive probe


@dataclass(frozen=True)
class Plan:
    """What the policy needs from a spec, with sizes already resolved to bytes (stored in ``ladder.json`` when
    the run starts, so a report judges with the numbers the run used)."""
    batch_sizes: list[int]
    refine: str = "none"
    granularity: int = 4
    repeats: int = 1
    retries: int = 1
    stress: bool = False
    stress_recipe: str = ""          # for the reason sentence, e.g. "220 steps, validation every 50 over 2 batches"
    forecast_required: bool = False  # the spec names a long run: a stress pick needs a forecast that fits
    limit_bytes: Optional[int] = None
    limit_name: str = "cap"
    headroom_bytes: int = 0
    rss_limit_bytes: Optional[int] = None
    cap_bytes: Optional[int] = None
    stress_weight: float = 6.0       # how much longer a stress probe runs than a one-val one (for scheduling)
    # What must fit under a cap: "working set" (see fit_peak). A run stored before that existed was judged on the
    # "charge", and a resume keeps judging it so: one run, one measure.
    peak_measure: str = "charge"

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(data: dict) -> "Plan":
        known = {f.name for f in fields(Plan)}
        return Plan(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Verdict:
    pick: Optional[int]
    reason: str
    exit_code: int
    failed: Optional[ProbeRecord] = None
    confirmed_by: Optional[str] = None
    rejected: list[str] = field(default_factory=list)
    status: str = "done"             # done | inconclusive | unfinished | interrupted

    @property
    def inconclusive(self) -> bool:
        return self.status == "inconclusive"


# ---------------------------------------------------------------------------------------------------- records
Key = tuple[str, int, int]   # (search | repeat | stress, batch size, repeat)


def warmup_cap(plan: Plan) -> Optional[int]:
    """The warm-up's cap: twice the probes' cap, within the soft limit (never below the cap). The warm-up is
    not judged; it exists to leave the libraries and data in the page cache. Under the probes' own cap it is
    squeezed to the cap and the kernel evicts that cache again (measured on SLURM: a warm-up at the cap left
    bs=8 charged 1.23 GiB, bs=12 0.97 GiB), so the first counted probe paid the cold-cache charge anyway."""
    if plan.cap_bytes is None:
        return None
    room = plan.rss_limit_bytes if plan.rss_limit_bytes is not None else 2 * plan.cap_bytes
    return max(plan.cap_bytes, min(2 * plan.cap_bytes, room))


def _key(rec: ProbeRecord) -> Key:
    return ("search" if rec.phase in SEARCH_PHASES else rec.phase, rec.batch_size, rec.repeat)


NOT_RUN = (Outcome.interrupted, Outcome.cancelled)   # ended without saying anything: run again when needed


def attempts(records: Iterable[ProbeRecord]) -> dict[Key, list[ProbeRecord]]:
    """The finished (not interrupted, not cancelled) records of each probe slot, oldest first (retries after
    the first try)."""
    out: dict[Key, list[ProbeRecord]] = {}
    for rec in sorted(records, key=lambda r: (r.retry, r.started_at, r.attempt)):
        if rec.outcome not in NOT_RUN:
            out.setdefault(_key(rec), []).append(rec)
    return out


def rung_key(item) -> tuple[str, int, int, int]:
    """What matches a rung to its record: (search | repeat | stress, batch size, repeat, retry)."""
    return ("search" if item.phase in SEARCH_PHASES else item.phase, item.batch_size, item.repeat, item.retry)


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


def latest(records: Iterable[ProbeRecord]) -> dict[Key, ProbeRecord]:
    """The latest finished record of each probe slot."""
    return {key: tries[-1] for key, tries in attempts(records).items()}


def one_val(records: Iterable[ProbeRecord]) -> dict[int, ProbeRecord]:
    """The one-val probe of each batch size (ladder or refine phase), its latest try."""
    return {bs: rec for (group, bs, rep), rec in latest(records).items() if group == "search" and rep == 0}


@dataclass(frozen=True)
class Slot:
    """Where one probe slot stands: missing | ok | memory | retry (run try ``retry`` next) | inconclusive."""
    state: str
    record: Optional[ProbeRecord] = None
    retry: int = 0


def slot(plan: Plan, tries: list[ProbeRecord]) -> Slot:
    if not tries:
        return Slot("missing")
    last = tries[-1]
    if last.outcome == Outcome.ok:
        return Slot("ok", last)
    if last.outcome.is_memory_verdict:
        return Slot("memory", last)
    failed = sum(1 for r in tries if not r.outcome.is_memory_verdict and r.outcome != Outcome.ok)
    if failed <= plan.retries:
        return Slot("retry", last, failed)
    return Slot("inconclusive", last)


def fit_peak(rec: ProbeRecord, measure: str = "working set") -> int:
    """The peak that must fit under the limit. Under a cap, with ``measure`` "working set": the cgroup's working
    set (charged memory less its inactive file cache; its sampled peak, plus whatever charge the samples missed)
    where the record has one, else the charged peak; with "charge": the charged peak. Without a cap, the RSS
    high-water mark.

    Why not the charged peak: it counts page cache, which the kernel takes back before it OOM-kills, so it
    grows toward any cap as files are read and sits *at* the cap of a probe that merely cached a lot. Measured
    on the bundled trainer's bs=20 stress probe under 1.25 GiB, fresh clones: charged the whole cap in one run,
    1.19-1.20 GiB in two others; run alone, at the cap for a minute, its working set peaked at 1.21 GiB. Judged
    by the charge, the same rung passed or failed the headroom by what the page cache held.

    The working set is sampled, the charged peak is the kernel's own: a spike between two samples shows in the
    charged peak only. The gap between the charged peak and the largest sampled charge is that spike's least
    size, so it is added back (it is ~0 for a probe that sat at its cap, the case the working set is for)."""
    if rec.limits.cap_bytes is not None and rec.peaks.kernel_bytes is not None:
        ws, kernel = rec.peaks.working_set_sampled_bytes, rec.peaks.kernel_bytes
        if measure != "working set" or ws is None:
            return kernel
        missed = max(0, kernel - (rec.peaks.cgroup_sampled_bytes or kernel))
        return min(kernel, ws + missed)
    return max(rec.peaks.sampled_rss_bytes, rec.peaks.vmhwm_bytes or 0, rec.peaks.sampled_pss_bytes or 0)


# ---------------------------------------------------------------------------------------------------- search
@dataclass(frozen=True)
class Search:
    next: Optional[Rung]
    ok: list[int]                    # ok one-val rungs below the first failure, ascending
    first_failure: Optional[ProbeRecord]
    inconclusive: Optional[ProbeRecord] = None
    predicted: str = ""              # refine: model: the rung above the pick left unprobed, and why


def search(plan: Plan, tries: dict[Key, list[ProbeRecord]]) -> Search:
    sizes = sorted(plan.batch_sizes)
    states = {bs: slot(plan, tries.get(("search", bs, 0), [])) for bs in sizes}
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
        return Search(Rung(inside[(len(inside) - 1) // 2], "refine"), ok, states[hi].record)
    return Search(None, ok, states[hi].record)


def _model_search(plan: Plan, sizes: list[int], states: dict[int, Slot], failures: list[int],
                  ok: list[int]) -> Optional[Search]:
    """refine: model. The first two rungs, then a line through the passing peaks (``memory_model``): probe the
    largest grid size it puts under the limit less its margin, then the one above — unless three or more rungs
    lie on the line and it puts that one clearly over: then it is left unprobed, and the verdict says so. None
    when the line is no good (memory that does not grow, or points off the line): bisection decides then."""
    from hlrp_ladder import memory_model

    hi = failures[0] if failures else None
    hi_rec = states[hi].record if hi is not None else None
    for bs in sizes[:2]:
        if states[bs].state == "missing" and (hi is None or bs < hi):
            return Search(Rung(bs), ok, hi_rec)
    if not ok or (hi is not None and not [bs for bs in sizes if ok[-1] < bs < hi]):
        return Search(None, ok, hi_rec)  # no stable rung, or the boundary found
    below = [bs for bs in sizes if hi is None or bs < hi]
    budget = plan.limit_bytes - plan.headroom_bytes
    line = memory_model.fit([(bs, fit_peak(states[bs].record, plan.peak_measure)) for bs in ok])
    if line is None or not line.good(budget):
        return None
    margin = line.margin(budget)
    if any(line.predict(bs) + margin <= budget for bs in failures):
        return None  # a rung the line put clearly under the limit failed: the line is wrong (a knee)
    target = max(memory_model.largest_fitting(line, below, budget, margin) or ok[-1], ok[-1])
    if states[target].state == "missing":
        return Search(Rung(target, "refine"), ok, hi_rec)
    above = next((bs for bs in below if bs > target), None)
    if above is None:
        return Search(None, ok, hi_rec)  # the boundary is found (or the top rung passed)
    if states[above].state == "missing":
        predicted = line.predict(above)
        if line.points >= 3 and predicted > budget + margin:
            return Search(None, ok, hi_rec, predicted=(
                f"bs={above} was not probed: the memory model ({line.describe()}) puts it at "
                f"{gib(predicted)}, over the {gib(budget)} {plan.limit_name}" +
                (" less headroom" if plan.headroom_bytes else "") + f" by more than its {gib(margin)} margin"))
        return Search(Rung(above, "refine"), ok, hi_rec)
    return None  # the probed rungs disagree with the line: bisection


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
    peak = fit_peak(rec, plan.peak_measure)
    if peak + plan.headroom_bytes <= plan.limit_bytes:
        return None
    what = "" if rec.phase in SEARCH_PHASES else f" {rec.phase}"
    return (f"bs={rec.batch_size}{what} peak {gib(peak)} leaves {gib(max(0, plan.limit_bytes - peak))} free under "
            f"the {gib(plan.limit_bytes)} {plan.limit_name}, less than the {gib(plan.headroom_bytes)} headroom")


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
    chain = [(("search", bs, 0), Rung(bs, "ladder" if plan.refine == "none" else "refine"))]
    chain += [(("repeat", bs, k), Rung(bs, "repeat", k)) for k in range(2, plan.repeats + 1)]
    if plan.stress:
        chain.append((("stress", bs, 0), Rung(bs, "stress")))
    for key, rung in chain:
        st = slot(plan, tries.get(key, []))
        if st.state == "missing":
            return Candidate("pending", rung)
        if st.state == "retry":
            return Candidate("pending", Rung(bs, st.record.phase, rung.repeat, st.retry))
        if st.state == "inconclusive":
            return Candidate("inconclusive", reason=describe(st.record), record=st.record)
        if st.state == "memory":
            return Candidate("rejected", reason=describe(st.record), record=st.record)
        if key[0] == "stress":
            problem = _headroom_problem(plan, st.record)
            if problem:
                return Candidate("rejected", reason=problem, record=st.record)
            fc = st.record.forecast
            if plan.forecast_required and (fc is None or fc.fits is None):
                why = fc.reason if fc is not None else "no growth forecast was made"
                return Candidate("inconclusive", reason=f"{describe(st.record)}, but {why}", record=st.record)
            return Candidate("accepted", record=st.record)
        one_vals.append(st.record)
        if len(one_vals) == plan.repeats:
            worst = max(one_vals, key=lambda r: fit_peak(r, plan.peak_measure))
            problem = _headroom_problem(plan, worst)
            if problem:
                return Candidate("rejected", reason=problem, record=worst)
            if not plan.stress:
                return Candidate("accepted", record=worst)
    raise AssertionError("unreachable: the chain ends in an accepted candidate")


@dataclass(frozen=True)
class Confirmation:
    next: Optional[Rung]
    pick: Optional[int]
    rejected: list[str]
    evidence: Optional[ProbeRecord] = None   # the record that confirmed the pick
    inconclusive: Optional[Candidate] = None


def confirm(plan: Plan, tries: dict[Key, list[ProbeRecord]], found: Search) -> Confirmation:
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


# ---------------------------------------------------------------------------------------------------- the two calls
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
        return _inconclusive(plan, describe(found.inconclusive), found.inconclusive, passed,
                             f"bs={passed} passed" if passed else "no rung passed")
    failure = f"; {describe(found.first_failure)}" if found.first_failure is not None else ""
    if not found.ok:
        first = found.first_failure
        what = describe(first) if first is not None else "nothing ran"
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
                     f"{describe(conf.evidence)}" + _forecast_clause(conf.evidence) + ".")
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
    if rec is None or rec.forecast is None:
        return ""
    return f", {rec.forecast.reason}"

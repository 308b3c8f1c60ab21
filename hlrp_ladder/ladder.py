"""Drives a ladder: asks the policy for the next rung, submits it to an executor, polls the handles, stores
the records. The orchestrator never waits on one probe: it polls, so cancelling on Ctrl-C, and an orchestrator
that died while its jobs ran on (``--resume`` re-attaches them), fall out of the same loop.

The loop holds no judgement of its own: which rung, what is stable and what is picked are the policy's.
"""
from __future__ import annotations

import dataclasses
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

from hlrp_ladder import executors, forecast, host, policy, sizes
from hlrp_ladder.executors.core import Executor, Handle
from hlrp_ladder.flight import POLL_S, Flight, Slot
from hlrp_ladder.live import LiveView
from hlrp_ladder.probe import cgroup as cgroups
from hlrp_ladder.probe.cgroup import safe_name
from hlrp_ladder.records import Outcome, ProbeRecord, ProbeRequest
from hlrp_ladder.schedule import schedule
from hlrp_ladder.spec import Recipe, Spec
from hlrp_ladder.signals import StopFlag
from hlrp_ladder.sizes import gib
from hlrp_ladder.store import RESULT, RunStore, StoreError, probe_folder_name, write_json



@dataclass
class RunResult:
    store: RunStore
    verdict: policy.Verdict
    records: list[ProbeRecord] = field(default_factory=list)


def long_run_steps(spec: Spec, rec: ProbeRecord) -> Optional[int]:
    """The long run's length in steps: overnight.max_steps, or its hours at the rate the probe measured."""
    night = spec.overnight
    if night is None:
        return None
    if night.max_steps:
        return night.max_steps
    if night.hours and rec.metrics.step_per_s:
        return int(night.hours * 3600 * rec.metrics.step_per_s)
    return None


def with_forecast(spec: Spec, plan: policy.Plan, rec: ProbeRecord) -> ProbeRecord:
    """A stress record with its growth forecast; one that survived but will not fit becomes forecast_oom."""
    if rec.phase != "stress" or spec.stress is None or rec.outcome != Outcome.ok:
        return rec
    night = spec.overnight
    rec.forecast = forecast.assess(
        rec, cycle_steps=spec.stress.check_interval, warmup=spec.forecast.warmup_cycles,
        long_run_steps=long_run_steps(spec, rec), long_run_interval=night.check_interval if night else 1,
        limit_bytes=plan.limit_bytes, limit_name=plan.limit_name, headroom_bytes=plan.headroom_bytes,
        peak_measure=plan.peak_measure)
    if rec.forecast.fits is False:
        rec.outcome = Outcome.forecast_oom
        rec.evidence.detail = f"survived the stress probe, but {rec.forecast.reason}"
    return rec


def build_request(spec: Spec, plan: policy.Plan, store: RunStore, rung: policy.Rung,
                  cpus: Optional[list[int]] = None) -> ProbeRequest:
    """The probe a rung runs, with the limits the run resolved when it started (``plan``). A folder left by a
    cancelled (or interrupted) try of the same rung is set aside first."""
    folder = probe_folder_name(rung.batch_size, rung.phase, rung.repeat, rung.retry)
    store.set_aside_folder(folder)
    recipe = spec.recipe(rung.phase)
    return ProbeRequest(
        folder=store.root / folder, batch_size=rung.batch_size, phase=rung.phase, repeat=rung.repeat,
        retry=rung.retry, attempt=store.attempts(folder), argv=spec.argv(rung.batch_size, recipe),
        env=dict(spec.env), cwd=os.getcwd(), rss_limit_bytes=plan.rss_limit_bytes, cap_bytes=plan.cap_bytes,
        metric=spec.memory.metric, interval_s=spec.memory.sample_interval_s, timeout_s=spec.timeout(rung.phase),
        kill_grace_s=spec.kill_grace_s, cgroup_name=safe_name(f"{spec.name}-{store.root.name}-{folder}"),
        probe_id=f"{spec.name}/{store.root.name}/{folder}/{uuid.uuid4().hex[:12]}",
        check_interval=recipe.check_interval, metrics_regex=spec.metrics_regex, cpus=cpus)


WARMUP = "warmup"


def warmup_request(spec: Spec, plan: policy.Plan, store: RunStore, cpus: Optional[list[int]]) -> ProbeRequest:
    """The warm-up: the first rung for a few steps and one validation (when the recipe's keys let us say so), in
    ``warmup/``, outside the ladder's records."""
    rung = policy.Rung(min(spec.batch_sizes), "warmup")
    short = Recipe(max_steps=min(5, spec.probe.max_steps), check_interval=min(5, spec.probe.max_steps),
                   limit_batches=1, keys=spec.probe.keys)
    request = build_request(spec, plan, store, policy.Rung(rung.batch_size), cpus)
    return request.model_copy(update={"folder": store.root / WARMUP, "phase": "warmup",
                                      "argv": spec.argv(rung.batch_size, short), "check_interval": 5,
                                      "cap_bytes": policy.warmup_cap(plan)})


def run_warmup(spec: Spec, plan: policy.Plan, store: RunStore, flight: Flight, view: LiveView, stop) -> None:
    """Run the warm-up alone and wait for it; what it measured does not count."""
    def collect(slot: Slot, record: ProbeRecord) -> ProbeRecord:
        view.message(f"warm-up (bs={record.batch_size}, not counted): {record.outcome.value} after "
                     f"{record.duration_s:.0f} s; the page cache now holds what the probes read in")
        return record

    flight.submit(WARMUP, 0, warmup_request(spec, plan, store, flight.cores_of(0)))
    while flight and not stop():
        flight.poll(collect)
        time.sleep(POLL_S)
    if stop() and flight:
        flight.stop(collect)


def resolve_plan(spec: Spec, executor_facts: Optional[dict] = None) -> tuple[policy.Plan, dict, list[str]]:
    """The plan and host facts of a new run, and what to tell the user about them. Percentages resolve against
    the memory the probes can really use: here, the smallest of MemTotal and the cgroup limits above this
    process; on a cluster, what the executor says a node has. A cap that cannot be enforced here is dropped —
    "no cap: <why>" — and the soft limit, lowered to the cap's size, is what the run is judged by."""
    notes: list[str] = []
    if executor_facts is not None:  # probes run elsewhere: the executor knows the machine
        usable = executor_facts.get("usable_bytes") or host.usable_memory()
        return spec.plan(usable), executor_facts, notes
    usable = host.usable_memory()
    plan = spec.plan(usable)
    facts = host.facts(plan.cap_bytes)
    if plan.cap_bytes is not None and not facts["cap_enforced"]:
        soft = min(plan.rss_limit_bytes, plan.cap_bytes)
        notes.append(f"no cap: {facts['cgroup_note']}; going on with the soft limit only, lowered to the cap's "
                     f"{gib(plan.cap_bytes)} (on summed {spec.memory.metric.upper()}, which counts shared pages a "
                     f"cgroup would not charge: a stricter limit)")
        headroom = 0 if spec.memory.headroom is None else sizes.resolve(spec.memory.headroom, soft)
        plan = dataclasses.replace(plan, cap_bytes=None, rss_limit_bytes=soft, limit_bytes=soft,
                                   limit_name="soft limit", headroom_bytes=headroom)
    return plan, facts, notes


def open_run(spec: Spec, executor: Executor, resume: Optional[str], command_line: list[str], view: LiveView,
             executor_facts: Optional[dict] = None) -> tuple[RunStore, policy.Plan, list[Handle]]:
    """A new run, or the run to resume (``resume='latest'`` for the spec's latest), locked for this process;
    the plan it is judged by (the one stored when it started); and, on resume, the probes still running (a
    SLURM job outlives an orchestrator that was killed), re-attached."""
    if resume is None:
        plan, facts, notes = resolve_plan(spec, executor_facts)
        for note in notes:
            view.message(note)
        store = RunStore.create(spec, command_line, plan.to_json(), facts)
        store.lock()
        return store, plan, []
    store = RunStore.find(spec.runs_dir, None if resume == "latest" else resume, spec.name, kind="ladder")
    state = store.state()
    if state.get("fingerprint") != spec.fingerprint():
        raise StoreError(f"{store.root}: the spec changed since this run started; start a new run instead "
                         f"of resuming")
    store.lock()
    running = reattach(store, executor, view)
    if state.get("plan"):
        plan = policy.Plan.from_json(state["plan"])
    else:  # a run from before plans were stored: resolve now, and keep it
        plan, facts, _ = resolve_plan(spec, executor_facts)
        store.write_state(plan=plan.to_json(), host=facts)
    store.write_state(status="running")
    return store, plan, running


def reattach(store: RunStore, executor: Executor, view: LiveView) -> list[Handle]:
    """On resume: the probes still running (a SLURM job outlives an orchestrator that was killed), or finished
    meanwhile, re-attached; every other probe that gave no verdict set aside after killing what it left."""
    running = []
    for folder in store.unfinished():
        handle = executor.reattach(folder)
        if handle is not None:
            running.append(handle)
            view.message(f"resume: {folder.name}: {handle.describe()} still running or finished meanwhile; "
                         f"re-attached")
    for note in store.set_aside(skip={h.request.folder.name for h in running}, cleanup=executor.cleanup):
        view.message(f"resume: {note}")
    return running


def run_ladder(spec: Spec, view: LiveView, resume: Optional[str] = None,
               command_line: Optional[list[str]] = None) -> RunResult:
    """Run (or resume) the ladder of ``spec`` through the executor it names, to its verdict."""
    leaf = cgroups.delegate() if spec.executor.kind == "local" else None
    try:
        return _run(spec, view, resume, command_line or [])
    finally:
        cgroups.undelegate(leaf)


def _rung(request: ProbeRequest) -> policy.Rung:
    return policy.Rung(request.batch_size, request.phase, request.repeat, request.retry)


def local_cores(spec: Spec) -> Optional[list[list[int]]]:
    """Each local slot's cores (None: no pinning asked for, or not local)."""
    return spec.executor.probe_cpus(sorted(os.sched_getaffinity(0))) if spec.executor.kind == "local" else None


def prepare(spec: Spec, view: LiveView) -> tuple[Executor, Optional[dict]]:
    """The spec's executor; locally, stale probe cgroups of runners that are gone swept first."""
    executor, executor_facts = executors.create(spec)
    if spec.executor.kind == "local":
        removed, busy = cgroups.sweep_stale(cgroups.find_parent()[0])
        for path in removed:
            view.message(f"removed a stale probe cgroup: {path}")
        for path in busy:
            view.message(f"warning: {path} still holds processes of a probe whose monitor is gone; "
                         f"--resume of its run kills them")
    return executor, executor_facts


def interrupted(store: RunStore, command_line: list[str], records: list[ProbeRecord], verb: str = "run") -> RunResult:
    spec_arg = command_line[2] if len(command_line) > 2 else "SPEC"
    reason = f"interrupted; resume with: hlrp-ladder {verb} {spec_arg} --resume {store.root}"
    store.write_state(status="interrupted", reason=reason, exit_code=policy.EXIT_INTERRUPTED)
    return RunResult(store, policy.Verdict(None, reason, policy.EXIT_INTERRUPTED, status="interrupted"), records)


def _run(spec: Spec, view: LiveView, resume: Optional[str], command_line: list[str]) -> RunResult:
    executor, executor_facts = prepare(spec, view)
    store, plan, reattached = open_run(spec, executor, resume, command_line, view, executor_facts)
    if spec.executor.kind == "local":  # where this run's probe cgroups go: resolved when it started, or now
        executor.configure(store.state().get("host") or {} if resume is None else host.facts(plan.cap_bytes))
    loaded = store.load()
    for warning in loaded.warnings:
        view.message(f"warning: {warning}")
    # A stress record is written, then rewritten with its forecast: one killed in between gets it again here.
    records = [with_forecast(spec, plan, r) if r.forecast is None else r for r in loaded.records]
    for rec in policy.latest(records).values():
        view.message(f"resume: {policy.describe(rec)} (kept from {rec.folder})")
    flight = Flight(executor, spec.executor.max_parallel, local_cores(spec), view)
    for handle in reattached:
        flight.adopt(_rung(handle.request), handle)

    def collect(slot: Slot, record: ProbeRecord) -> ProbeRecord:
        if slot.cancelled and record.outcome == Outcome.interrupted:
            record.outcome = Outcome.cancelled
            record.evidence.detail = ("cancelled: the ladder no longer needed this probe (run ahead of time in a "
                                      "parallel slot); not a verdict")
            write_json(slot.request.folder / RESULT, record.model_dump(mode="json"))
        record = with_forecast(spec, plan, record)
        if record.forecast is not None:
            write_json(slot.request.folder / RESULT, record.model_dump(mode="json"))
        records.append(record)
        return record

    with StopFlag() as stop:
        if spec.warmup and resume is None:
            run_warmup(spec, plan, store, flight, view, stop)
        while not stop():
            flight.poll(collect)
            now = schedule(plan, records, flight.tags(), flight.slots)
            for rung in now.cancel:
                flight.cancel(rung)
            for rung, index in zip(now.start, flight.free()):
                flight.submit(rung, index, build_request(spec, plan, store, rung, flight.cores_of(index)))
            if not flight:
                break
            time.sleep(POLL_S)
        if stop():
            flight.stop(collect)
            return interrupted(store, command_line, records)
    verdict = policy.verdict(plan, records)
    store.write_state(status="inconclusive" if verdict.inconclusive else "done", pick=verdict.pick,
                      reason=verdict.reason, exit_code=verdict.exit_code, confirmed_by=verdict.confirmed_by)
    return RunResult(store, verdict, records)

"""Drives a ladder: asks the policy for the next rungs (``search.schedule``: the sequential ladder's, and in
parallel slots the likely next ones), submits them through the session, and stores the records. The loop holds
no judgement of its own: which rung, what is stable and what is picked are the policy's.
"""
from __future__ import annotations

from typing import Optional

from hlrp_ladder import executors
from hlrp_ladder.records import SEARCH_PHASES, Outcome, Phase, ProbeRecord, ProbeRequest
from hlrp_ladder.run.flight import Flight, InFlight
from hlrp_ladder.run.live import LiveView
from hlrp_ladder.run.session import (RunResult, drive, interrupted, note_calls, open_run, probe_request,
                                    stopped_by_full_disk)
from hlrp_ladder.run.store import RunStore, probe_folder_name
from hlrp_ladder.search import forecast
from hlrp_ladder.search.schedule import schedule
from hlrp_ladder.search.state import Plan, Rung, gpu_headroom, latest, warmup_cap
from hlrp_ladder.search.decide import verdict as judge
from hlrp_ladder.search.words import probe_clause
from hlrp_ladder.spec.model import Spec
from hlrp_ladder.spec.sections import Recipe
from hlrp_ladder.util.files import as_disk_full
from hlrp_ladder.util.files import no_space
from hlrp_ladder.util.signals import StopFlag

WARMUP = "warmup"


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


def with_forecast(spec: Spec, plan: Plan, rec: ProbeRecord) -> ProbeRecord:
    """A stress record with its growth forecast; one that survived but will not fit becomes forecast_oom."""
    if rec.phase != Phase.stress or spec.stress is None or rec.outcome != Outcome.ok:
        return rec
    night = spec.overnight
    common = dict(cycle_steps=spec.stress.check_interval, warmup=spec.forecast.warmup_cycles,
                  long_run_steps=long_run_steps(spec, rec), long_run_interval=night.check_interval if night else 1)
    rec.forecast = forecast.assess(rec, limit_bytes=plan.limit_bytes, limit_name=plan.limit_name,
                                   headroom_bytes=plan.headroom_bytes, **common)
    if rec.gpu_judged:  # the GPU's own forecast, against the GPU limit its node resolved
        rec.gpu_forecast = forecast.assess(rec, limit_bytes=rec.limits.gpu_fit_bytes, limit_name="GPU limit",
                                           headroom_bytes=gpu_headroom(plan, rec), gpu=True, **common)
    failing = [fc for fc in (rec.gpu_forecast, rec.forecast) if fc is not None and fc.fits is False]
    if failing:
        rec.outcome = Outcome.forecast_oom
        rec.evidence.detail = f"survived the stress probe, but {failing[0].reason}"
    return rec


def rung_request(spec: Spec, plan: Plan, store: RunStore, rung: Rung, cpus: Optional[list[int]] = None,
                 gpus: Optional[list[int]] = None) -> ProbeRequest:
    """The probe a rung runs, with the limits the run resolved when it started (``plan``)."""
    recipe = spec.recipe(rung.phase)
    return probe_request(spec, plan, store, probe_folder_name(rung.batch_size, rung.phase, rung.repeat, rung.retry),
                         batch_size=rung.batch_size, phase=rung.phase, repeat=rung.repeat, retry=rung.retry,
                         argv=spec.argv(rung.batch_size, recipe), env=dict(spec.env),
                         timeout_s=spec.timeout(rung.phase), check_interval=recipe.check_interval, cpus=cpus,
                         gpus=gpus)


def warmup_request(spec: Spec, plan: Plan, store: RunStore, cpus: Optional[list[int]],
                   gpus: Optional[list[int]] = None) -> ProbeRequest:
    """The warm-up: the first rung for a few steps and one validation (when the recipe's keys let us say so), in
    ``warmup/``, outside the ladder's records, under twice the cap (``warmup_cap``)."""
    bs = min(spec.batch_sizes)
    short = Recipe(max_steps=min(5, spec.probe.max_steps), check_interval=min(5, spec.probe.max_steps),
                   limit_batches=1, keys=spec.probe.keys)
    return probe_request(spec, plan, store, WARMUP, batch_size=bs, phase=Phase.warmup, argv=spec.argv(bs, short),
                         env=dict(spec.env), timeout_s=spec.timeout(Phase.ladder), check_interval=5,
                         cap_bytes=warmup_cap(plan), cpus=cpus, gpus=gpus)


def run_warmup(spec: Spec, plan: Plan, store: RunStore, flight: Flight, view: LiveView,
               stop: StopFlag) -> Optional[ProbeRecord]:
    """Run the warm-up alone and wait for it; what it measured does not count. Its record."""
    done: list[ProbeRecord] = []

    def collect(slot: InFlight, record: ProbeRecord) -> ProbeRecord:
        if record.outcome == Outcome.ok:
            view.message(f"warm-up (bs={record.batch_size}, not counted): ok after {record.duration_s:.0f} s; the "
                         f"page cache now holds what the probes read in")
        else:
            view.message(f"warm-up (bs={record.batch_size}, not counted) failed: {probe_clause(record)}; the page "
                         f"cache may not hold what the probes read in")
        done.append(record)
        return record

    flight.submit(WARMUP, 0, warmup_request(spec, plan, store, flight.cores_of(0), flight.gpus_of(0)))
    drive(flight, stop, collect, lambda: None)
    return done[0] if done else None


def same_failure(plan: Plan, warm: Optional[ProbeRecord], record: ProbeRecord) -> Optional[ProbeRecord]:
    """The warm-up's failure counted as the first rung's retry, when the rung's first try failed the same way (both
    an ``error`` with the same log line: a start-up crash; a timeout's last line is only what it printed last): run
    a third time it would only fail again. Its record goes in the retry's own folder (``bs-0002-retry1``), so a
    report and a resume read what the run judged."""
    if warm is None or plan.retries < 1 or warm.outcome != Outcome.error or record.outcome != Outcome.error \
            or record.retry or record.phase not in SEARCH_PHASES or record.batch_size != warm.batch_size \
            or not warm.evidence.log_line or warm.evidence.log_line != record.evidence.log_line:
        return None
    twin = record.model_copy(deep=True, update={
        "retry": 1, "folder": probe_folder_name(record.batch_size, record.phase, 0, 1),
        "started_at": record.started_at + 1e-3, "ended_at": record.ended_at + 1e-3})
    twin.evidence.detail = (f"the warm-up failed the same way before it ({warm.evidence.detail}; its log: "
                            f"{warm.folder}/log.txt): counted as this rung's retry, not run a third time")
    return twin


def run_ladder(spec: Spec, view: LiveView, resume: Optional[str] = None,
               command_line: Optional[list[str]] = None) -> RunResult:
    """Run (or resume) the ladder of ``spec`` through the executor it names, to its verdict."""
    executor = executors.create(spec)
    with executor.session():
        for note in executor.sweep():
            view.message(note)
        return _run(spec, executor, view, resume, command_line or [])


def _rung(request: ProbeRequest) -> Rung:
    return Rung(request.batch_size, request.phase, request.repeat, request.retry)


def _run(spec: Spec, executor: executors.Executor, view: LiveView, resume: Optional[str],
         command_line: list[str]) -> RunResult:
    store, plan, reattached = open_run(spec, executor, resume, command_line, view)
    loaded = store.load()
    for warning in loaded.warnings:
        view.message(f"warning: {warning}")
    # A stress record is written, then rewritten with its forecast: one killed in between gets it again here.
    records = [with_forecast(spec, plan, r) if r.forecast is None else r for r in loaded.records]
    for rec in latest(records).values():
        view.message(f"resume: {probe_clause(rec)} (kept from {rec.folder})")
    flight = Flight(executor, spec.executor.max_parallel, executor.slot_cores(spec.executor), view,
                    executor.slot_gpus(spec.executor))
    for handle in reattached:
        flight.adopt(_rung(handle.request), handle)

    def collect(slot: InFlight, record: ProbeRecord) -> ProbeRecord:
        folder = store.probe(slot.request.folder.name)
        if slot.cancelled and record.outcome == Outcome.interrupted:
            record.outcome = Outcome.cancelled
            record.evidence.detail = ("cancelled: the ladder no longer needed this probe (run ahead of time in a "
                                      "parallel slot); not a verdict")
            folder.write_record(record)
        record = with_forecast(spec, plan, record)
        if record.forecast is not None:
            folder.write_record(record)
        records.append(record)
        twin = same_failure(plan, warm, record)
        if twin is not None:
            view.message(f"{probe_clause(record)}: the warm-up failed the same way; not run a third time")
            folder = store.probe(twin.folder)
            folder.path.mkdir(parents=True, exist_ok=True)
            folder.write_record(twin)
            records.append(twin)
        return record

    def step() -> None:
        now = schedule(plan, records, flight.tags(), flight.slots)
        for rung in now.cancel:
            flight.cancel(rung)
        for rung, index in zip(now.start, flight.free()):
            flight.submit(rung, index, rung_request(spec, plan, store, rung, flight.cores_of(index),
                                                    flight.gpus_of(index)))

    warm: Optional[ProbeRecord] = None
    try:
        with StopFlag() as stop:
            if spec.warmup and resume is None:
                warm = run_warmup(spec, plan, store, flight, view, stop)
            stopped = stop() or drive(flight, stop, collect, step)
        note_calls(store, executor)
        if stopped:
            return interrupted(store, command_line, records)
        found = judge(plan, records)
        store.write_state(status="inconclusive" if found.inconclusive else "done", pick=found.pick,
                          reason=found.reason, exit_code=found.exit_code, confirmed_by=found.confirmed_by)
    except OSError as exc:
        if not no_space(exc):
            raise
        raise stopped_by_full_disk(store, command_line, as_disk_full(exc)) from None
    return RunResult(store, found, records)

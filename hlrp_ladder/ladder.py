"""Drives a ladder: asks the policy for the next rung, runs it through an executor, stores the record.

The loop holds no judgement of its own: which rung, what is stable and what is picked are the policy's.
"""
from __future__ import annotations

import os
import signal
import uuid
from dataclasses import dataclass, field
from typing import Optional

from hlrp_ladder import forecast, host, policy
from hlrp_ladder.executors import Executor
from hlrp_ladder.live import LiveView
from hlrp_ladder.probe import cgroup as cgroups
from hlrp_ladder.probe.cgroup import safe_name
from hlrp_ladder.records import Outcome, ProbeRecord, ProbeRequest
from hlrp_ladder.spec import Spec
from hlrp_ladder.store import RESULT, RunStore, StoreError, probe_folder_name, write_json


class StopFlag:
    """SIGINT/SIGTERM set a flag the monitor polls, so the probe's tree is killed and recorded, not orphaned."""

    def __init__(self, signals: tuple = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.raised = False
        self.signals = signals
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        for sig in self.signals:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.raised


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
        limit_bytes=plan.limit_bytes, limit_name=plan.limit_name, headroom_bytes=plan.headroom_bytes)
    if rec.forecast.fits is False:
        rec.outcome = Outcome.forecast_oom
        rec.evidence.detail = f"survived the stress probe, but {rec.forecast.reason}"
    return rec


def build_request(spec: Spec, plan: policy.Plan, store: RunStore, rung: policy.Rung) -> ProbeRequest:
    """The probe a rung runs, with the limits the run resolved when it started (``plan``)."""
    folder = probe_folder_name(rung.batch_size, rung.phase, rung.repeat, rung.retry)
    recipe = spec.recipe(rung.phase)
    return ProbeRequest(
        folder=store.root / folder, batch_size=rung.batch_size, phase=rung.phase, repeat=rung.repeat,
        retry=rung.retry, attempt=store.attempts(folder), argv=spec.argv(rung.batch_size, recipe),
        env=dict(spec.env), cwd=os.getcwd(), rss_limit_bytes=plan.rss_limit_bytes, cap_bytes=plan.cap_bytes,
        metric=spec.memory.metric, interval_s=spec.memory.sample_interval_s, timeout_s=spec.timeout(rung.phase),
        kill_grace_s=spec.kill_grace_s, cgroup_name=safe_name(f"{spec.name}-{store.root.name}-{folder}"),
        probe_id=f"{spec.name}/{store.root.name}/{folder}/{uuid.uuid4().hex[:12]}",
        check_interval=recipe.check_interval, metrics_regex=spec.metrics_regex)


def resolve_plan(spec: Spec) -> tuple[policy.Plan, dict]:
    """The plan and host facts of a new run: percentages of the memory this process can really use."""
    usable = host.usable_memory()
    plan = spec.plan(usable)
    return plan, host.facts(plan.cap_bytes)


def open_run(spec: Spec, resume: Optional[str], command_line: list[str], view: LiveView) -> tuple[RunStore, policy.Plan]:
    """A new run, or the run to resume (``resume='latest'`` for the spec's latest), locked for this process,
    and the plan it is judged by (the one stored when it started)."""
    removed, busy = cgroups.sweep_stale()
    for path in removed:
        view.message(f"removed a stale probe cgroup: {path}")
    for path in busy:
        view.message(f"warning: {path} still holds processes of a probe whose monitor is gone; "
                     f"--resume of its run kills them")
    if resume is None:
        plan, facts = resolve_plan(spec)
        store = RunStore.create(spec, command_line, plan.to_json(), facts)
        store.lock()
        return store, plan
    store = RunStore.find(spec.runs_dir, None if resume == "latest" else resume, spec.name)
    state = store.state()
    if state.get("fingerprint") != spec.fingerprint():
        raise StoreError(f"{store.root}: the spec changed since this run started; start a new run instead "
                         f"of resuming")
    store.lock()
    for note in store.set_aside():
        view.message(f"resume: {note}")
    if state.get("plan"):
        plan = policy.Plan.from_json(state["plan"])
    else:  # a run from before plans were stored: resolve now, and keep it
        plan, facts = resolve_plan(spec)
        store.write_state(plan=plan.to_json(), host=facts)
    store.write_state(status="running")
    return store, plan


def run_ladder(spec: Spec, executor: Executor, view: LiveView, resume: Optional[str] = None,
               command_line: Optional[list[str]] = None) -> RunResult:
    store, plan = open_run(spec, resume, command_line or [], view)
    loaded = store.load()
    for warning in loaded.warnings:
        view.message(f"warning: {warning}")
    # A stress record is written, then rewritten with its forecast: one killed in between gets it again here.
    records = [with_forecast(spec, plan, r) if r.forecast is None else r for r in loaded.records]
    for rec in policy.latest(records).values():
        view.message(f"resume: {policy.describe(rec)} (kept from {rec.folder})")
    with StopFlag() as stop:
        while not stop():
            rung = policy.next_rung(plan, records)
            if rung is None:
                break
            request = build_request(spec, plan, store, rung)
            view.start(request)
            record = with_forecast(spec, plan, executor.run(request, view.on_sample, stop))
            if record.forecast is not None:
                write_json(request.folder / RESULT, record.model_dump(mode="json"))
            view.finish(record)
            records.append(record)
        if stop():
            spec_arg = (command_line or [])[2] if len(command_line or []) > 2 else "SPEC"
            reason = f"interrupted; resume with: hlrp-ladder run {spec_arg} --resume {store.root}"
            store.write_state(status="interrupted", reason=reason, exit_code=policy.EXIT_INTERRUPTED)
            return RunResult(store, policy.Verdict(None, reason, policy.EXIT_INTERRUPTED, status="interrupted"),
                             records)
    verdict = policy.verdict(plan, records)
    store.write_state(status="inconclusive" if verdict.inconclusive else "done", pick=verdict.pick,
                      reason=verdict.reason, exit_code=verdict.exit_code, confirmed_by=verdict.confirmed_by)
    return RunResult(store, verdict, records)

"""A run from start to end, whatever it runs (a ladder, a compare matrix): open a new run or resume one (the
fingerprint checked, probes still running re-attached, the others set aside), the one builder of probe requests
(the ladder's rungs, compare's runs and the long run all go through :func:`probe_request`), the drive loop that
polls the probes in flight, and the ending of an interrupted run.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from hlrp_ladder.executors.core import Executor, Handle
from hlrp_ladder.probe.cgroup import safe_name
from hlrp_ladder.probe.folder import probe_id
from hlrp_ladder.records import GpuRequest, Phase, ProbeRecord, ProbeRequest
from hlrp_ladder.run.flight import POLL_S, Flight, InFlight
from hlrp_ladder.run.live import LiveView
from hlrp_ladder.run.store import RunStore, StoreError
from hlrp_ladder.search import plan as plans
from hlrp_ladder.search.state import EXIT_INTERRUPTED, EXIT_NO_SPACE, Plan, Verdict
from hlrp_ladder.spec.model import Spec
from hlrp_ladder.spec.sections import GpuMemory
from hlrp_ladder.util import sizes
from hlrp_ladder.util.files import DiskFull, as_disk_full, no_space
from hlrp_ladder.util.signals import StopFlag
from hlrp_ladder.util.sizes import gib

Collect = Callable[[InFlight, ProbeRecord], ProbeRecord]
PROBE_DIR = "{probe_dir}"


@dataclass
class RunResult:
    store: RunStore
    verdict: Verdict
    records: list[ProbeRecord] = field(default_factory=list)


def resolve_plan(spec: Spec, executor: Executor) -> tuple[Plan, dict, list[str]]:
    """The plan and machine facts of a new run, and what to tell the user about them. Percentages resolve against
    the memory the probes can really use (here: the smallest of MemTotal and the cgroup limits above this
    process; on a cluster: what the executor says a node has). A cap that cannot be enforced is dropped — "no
    cap: <why>" — and the soft limit, lowered to the cap's size, is what the run is judged by."""
    plan = plans.resolve(spec, executor.usable_memory())
    facts = executor.facts(plan.cap_bytes)
    notes: list[str] = []
    if plan.cap_bytes is not None and facts.get("cap_enforced") is False:
        soft = min(plan.rss_limit_bytes, plan.cap_bytes)
        notes.append(f"no cap: {facts['cgroup_note']}; going on with the soft limit only, lowered to the cap's "
                     f"{gib(plan.cap_bytes)} (on summed {spec.memory.metric.upper()}, which counts shared pages a "
                     f"cgroup would not charge: a stricter limit)")
        headroom = 0 if spec.memory.headroom is None else sizes.resolve(spec.memory.headroom, soft, allow_zero=True)
        plan = dataclasses.replace(plan, cap_bytes=None, rss_limit_bytes=soft, limit_bytes=soft,
                                   limit_name="soft limit", headroom_bytes=headroom)
    return plan, facts, notes


def open_run(spec: Spec, executor: Executor, resume: Optional[str], command_line: list[str], view: LiveView,
             kind: str = "ladder", fingerprint: Optional[str] = None,
             **state) -> tuple[RunStore, Plan, list[Handle]]:
    """A new run (``state`` stored beside its plan), or the run to resume (``resume='latest'`` for the spec's
    latest of ``kind``), locked for this process; the plan it is judged by (the one stored when it started); and,
    on resume, the probes still running or finished meanwhile, re-attached. The executor is configured with the
    machine's facts: a new run's as it stores them, a resumed run's read afresh (cgroups may have changed)."""
    fingerprint = fingerprint or spec.fingerprint()
    if resume is None:
        plan, facts, notes = resolve_plan(spec, executor)
        for note in notes:
            view.message(note)
        store = RunStore.create(spec, command_line, plan.to_json(), facts, kind=kind, fingerprint=fingerprint, **state)
        store.lock()
        executor.configure(facts)
        return store, plan, []
    store = RunStore.find(spec.runs_dir, None if resume == "latest" else resume, spec.name, kind=kind)
    if store.state().get("fingerprint") != fingerprint:
        raise StoreError(f"{store.root}: the spec changed since this run started; start a new run instead of "
                         f"resuming")
    store.lock()
    plan = store.plan()
    # Where this run's probe cgroups go is resolved anew: the machine's cgroups may have changed meanwhile.
    executor.configure(executor.facts(plan.cap_bytes))
    running = reattach(store, executor, view)
    store.write_state(status="running")
    return store, plan, running


def reattach(store: RunStore, executor: Executor, view: LiveView) -> list[Handle]:
    """On resume: finished probes whose executor had not had its say (a SLURM job that ended while no
    orchestrator watched) settled; the probes still running (a SLURM job outlives an orchestrator that was
    killed), or finished meanwhile, re-attached; every other probe that gave no verdict set aside after killing
    what it left."""
    # both lists first: a record written while the finished ones settle stays with the unfinished, re-attached
    finished, unfinished = store.finished(), store.unfinished()
    for note in executor.settle(finished):
        view.message(f"resume: {note}")
    running = []
    for folder in unfinished:
        handle = executor.reattach(folder)
        if handle is not None:
            running.append(handle)
            view.message(f"resume: {folder.name}: {handle.where()} still running or finished meanwhile; "
                         f"re-attached")
    for note in store.set_aside(executor.cleanup, skip={h.request.folder.name for h in running}):
        view.message(f"resume: {note}")
    return running


def probe_request(spec: Spec, plan: Plan, store: RunStore, folder: str, *, batch_size: int, phase: Phase,
                  argv: list[str], env: dict[str, str], timeout_s: Optional[float], check_interval: int,
                  cap_bytes: Optional[int] = None, repeat: int = 0, retry: int = 0, variant: Optional[str] = None,
                  cpus: Optional[list[int]] = None, kill_grace_s: Optional[float] = None, stop_grace_s: float = 0.0,
                  expected_s: Optional[float] = None, set_aside: bool = True,
                  gpus: Optional[list[int]] = None) -> ProbeRequest:
    """The one place a probe request is made: the run's limits (``plan``, resolved when it started; ``cap_bytes``
    defaults to the plan's), the spec's sampling and regexes, the probe's folder in the run — a folder left by a
    cancelled or interrupted try of the same probe is set aside first (unless ``set_aside`` is False: a request
    only shown, by a dry run) — its cgroup name and its marker."""
    if set_aside:
        store.set_aside_folder(folder)
    where = str((store.root / folder).resolve())
    # {probe_dir} in an override or an env value: this probe's own folder (a trainer's --out_dir, its checkpoints),
    # so parallel slots never share one
    argv = [item.replace(PROBE_DIR, where) for item in argv]
    env = {k: v.replace(PROBE_DIR, where) for k, v in env.items()}
    return ProbeRequest(
        folder=(store.root / folder).resolve(), batch_size=batch_size, phase=phase, repeat=repeat, retry=retry,
        variant=variant, attempt=store.attempts(folder), argv=argv, env=env, cwd=os.getcwd(),
        rss_limit_bytes=plan.rss_limit_bytes, cap_bytes=plan.cap_bytes if cap_bytes is None else cap_bytes,
        metric=spec.memory.metric, interval_s=spec.memory.sample_interval_s, timeout_s=timeout_s,
        kill_grace_s=spec.kill_grace_s if kill_grace_s is None else kill_grace_s, stop_grace_s=stop_grace_s,
        cgroup_name=safe_name(f"{spec.name}-{store.root.name}-{folder}"),
        probe_id=probe_id(spec.name, store.root.name, folder), check_interval=check_interval,
        metrics_regex=spec.metrics_regex, cpus=cpus, expected_s=expected_s,
        gpu=gpu_request(spec, gpus) if plan.gpu_judged else None,
        ranks=spec.launcher.ranks, per_rank=spec.memory.per_rank, rank_grace_s=spec.launcher.rank_grace_s,
        launcher=spec.launcher.kind)


def gpu_request(spec: Spec, devices: Optional[list[int]]) -> GpuRequest:
    """GPU memory for a probe as the spec says it: judged wherever the probe sees a GPU (with the defaults when
    the spec has no memory.gpu section; required when it has one). ``devices``: the slot's own GPUs, locally;
    ``count``: how many to ask a scheduler for (``executor.gpus_per_probe``; on SLURM 1 by default where the
    spec has memory.gpu)."""
    g = spec.memory.gpu or GpuMemory()
    asked = spec.executor.gpus_per_probe
    count = len(devices) if devices is not None else (asked if asked is not None else int(spec.memory.gpu is not None))
    return GpuRequest(limit=g.limit, cap=g.cap, required=spec.memory.gpu is not None, devices=devices, count=count)


def drive(flight: Flight, stop: StopFlag, collect: Collect, step: Callable[[], None]) -> bool:
    """The loop every run turns: hand finished probes to ``collect``, let ``step`` submit (and cancel) what it
    wants, until nothing is in flight; never waiting on one probe. On Ctrl-C every probe is cancelled and its
    record collected; True then. On a full disk every probe is cancelled (nothing can be recorded) and
    :class:`DiskFull` goes on up."""
    try:
        while not stop():
            flight.poll(collect)
            step()
            if not flight:
                return False
            flight.wait(POLL_S)
        flight.stop(collect)
        return True
    except OSError as exc:
        if not no_space(exc):
            raise
        flight.abandon()
        raise as_disk_full(exc) from None


def note_calls(store: RunStore, executor: Executor) -> None:
    """The scheduler calls the run made (none locally), into its state: how hard it leaned on the controller."""
    calls = executor.calls()
    if calls:
        store.write_state(scheduler_calls=calls)


def stopped_by_full_disk(store: RunStore, command_line: list[str], exc: DiskFull,
                         verb: str = "run") -> DiskFull:
    """A run stopped by a full disk: its probes were stopped; its state says interrupted (written in place if
    need be); the error to show says what happened and how to go on."""
    spec_arg = command_line[2] if len(command_line) > 2 else "SPEC"
    resume = f"free space, then resume with: hlrp-ladder {verb} {spec_arg} --resume {store.root}"
    try:
        store.mark_stopped("interrupted", f"interrupted: {exc}; {resume}", EXIT_NO_SPACE)
    except OSError:
        pass  # not even in place: the resume treats it as an orchestrator that died
    exc.strerror = f"{exc}; the run is interrupted, nothing recorded is lost; {resume}"
    return exc


def interrupted(store: RunStore, command_line: list[str], records: list[ProbeRecord], verb: str = "run") -> RunResult:
    """The end of a run stopped by Ctrl-C: its state says so, and how to resume it."""
    spec_arg = command_line[2] if len(command_line) > 2 else "SPEC"
    reason = f"interrupted; resume with: hlrp-ladder {verb} {spec_arg} --resume {store.root}"
    store.write_state(status="interrupted", reason=reason, exit_code=EXIT_INTERRUPTED)
    return RunResult(store, Verdict(None, reason, EXIT_INTERRUPTED, status="interrupted"), records)


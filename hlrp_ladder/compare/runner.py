"""Runs a compare matrix — every variant x repeat at one batch size — through the spec's executor, in parallel
where it has slots, with the same monitor, outcomes and run folders as the ladder:

    runs/<name>/<run-id>-compare/
      spec.yaml  ladder.json (kind compare: the batch size, the variants, the pairs)
      warmup/  <variant>-r1/  <variant>-r2/  ...   probe folders, as a ladder's

Resumable like a ladder: finished runs are kept, the others (unfinished, interrupted, an error or a timeout the
user may have fixed) are set aside and run again.
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

from hlrp_ladder import executors
from hlrp_ladder.compare import matrix
from hlrp_ladder.records import Outcome, Phase, ProbeRecord, ProbeRequest
from hlrp_ladder.run.flight import Flight, InFlight
from hlrp_ladder.run.live import LiveView
from hlrp_ladder.run.session import (RunResult, drive, interrupted, note_calls, open_run, probe_request,
                                    stopped_by_full_disk)
from hlrp_ladder.run.store import RunStore
from hlrp_ladder.search.state import Plan, Verdict, warmup_cap
from hlrp_ladder.spec.loader import SpecError
from hlrp_ladder.spec.model import Spec
from hlrp_ladder.util.files import as_disk_full
from hlrp_ladder.util.files import no_space
from hlrp_ladder.util.signals import StopFlag

WARMUP = "warmup"


def fingerprint(spec: Spec) -> str:
    """What a compare run measures: the command, overrides, env, memory, executor and the matrix."""
    data = spec.settled(spec.model_dump(mode="json", include={"command", "overrides", "env", "memory", "executor",
                                                              "compare", "batch_size_key", "probe", "timeout_s",
                                                              "metrics_regex", "launcher"}))
    return "compare-" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def batch_size(spec: Spec) -> int:
    """The matrix's batch size: the spec's, or ``pick``: the latest finished ladder run's pick of this spec."""
    wanted = spec.compare.batch_size
    if wanted != "pick":
        return wanted
    for root in reversed(RunStore.runs(spec.runs_dir, spec.name, kind="ladder")):
        state = RunStore(root).state()
        if state.get("status") == "done" and state.get("pick"):
            return int(state["pick"])
    raise SpecError(f"compare.batch_size: 'pick', but no ladder run of {spec.name!r} under {spec.runs_dir} has a "
                    f"pick yet (hlrp-ladder run SPEC first, or give a batch size)")


def run_request(spec: Spec, plan: Plan, store: RunStore, bs: int, variant: str, repeat: int,
                cpus: Optional[list[int]], gpus: Optional[list[int]] = None) -> ProbeRequest:
    """A run of the matrix (``repeat`` 0: the warm-up, in ``warmup/``, one validation long, under twice the cap)."""
    cmp = spec.compare
    argv, env = matrix.effective(spec, variant, bs, seed=repeat or None)
    if not repeat:
        key = spec.probe.keys.max_steps
        argv = [f"{key}={min(cmp.check_interval, cmp.max_steps)}" if key and a.startswith(f"{key}=") else a
                for a in argv]
    return probe_request(spec, plan, store, matrix.run_folder(variant, repeat) if repeat else WARMUP,
                         batch_size=bs, phase=Phase.compare, repeat=repeat, variant=variant, argv=argv, env=env,
                         timeout_s=cmp.timeout_s or spec.timeout_s * max(1.0, cmp.max_steps / spec.probe.max_steps),
                         check_interval=cmp.check_interval, cap_bytes=None if repeat else warmup_cap(plan), cpus=cpus,
                         gpus=gpus)


def run_compare(spec: Spec, view: LiveView, resume: Optional[str] = None,
                command_line: Optional[list[str]] = None) -> RunResult:
    """Run (or resume) the compare matrix of ``spec`` to its last run."""
    if spec.compare is None:
        raise SpecError("the spec has no compare section (batch_size, variants, ...)")
    executor = executors.create(spec)
    with executor.session():
        for note in executor.sweep():
            view.message(note)
        return _run(spec, executor, view, resume, command_line or [])


def _run(spec: Spec, executor: executors.Executor, view: LiveView, resume: Optional[str],
         command_line: list[str]) -> RunResult:
    cmp = spec.compare
    new = {} if resume is not None else {"batch_size": batch_size(spec), "variants": dict(cmp.variants),
                                         "repeats": cmp.repeats}
    store, plan, reattached = open_run(spec, executor, resume, command_line, view, kind="compare",
                                       fingerprint=fingerprint(spec), **new)
    bs = int(store.state()["batch_size"])
    loaded = store.load().records
    records = [r for r in loaded if r.folder != WARMUP]
    have = {r.folder for r in loaded}
    # Round-robin (every variant's first run, then every second run): whatever drifts during the matrix
    # spreads over the variants instead of posing as one's cost. The warm-up goes first, alone.
    # a resumed run keeps the rounds it had added: finished, or still running (a SLURM job re-attached)
    rounds = max([cmp.repeats] + [r.repeat for r in records] + [h.request.repeat for h in reattached])
    pending = [(v, k) for k in range(1, rounds + 1) for v in cmp.variants
               if matrix.run_folder(v, k) not in have]
    first = next(iter(cmp.variants))
    if cmp.warmup and WARMUP not in have and records == []:
        pending.insert(0, (first, 0))
    flight = Flight(executor, spec.executor.max_parallel, executor.slot_cores(spec.executor), view,
                    executor.slot_gpus(spec.executor))
    for handle in reattached:
        tag = (handle.request.variant, handle.request.repeat)
        flight.adopt(tag, handle)
        if tag in pending:
            pending.remove(tag)

    def collect(slot: InFlight, record: ProbeRecord) -> ProbeRecord:
        if record.folder == WARMUP:
            view.message(f"warm-up ({first}, not counted): {record.outcome.value}; the page cache holds what the "
                         f"runs read in")
        else:
            records.append(record)
        return record

    def runs_of(variant: str) -> list[ProbeRecord]:
        return [r for r in records if r.variant == variant]

    def step() -> None:
        nonlocal rounds
        if not pending and not flight and matrix.more_rounds(spec, bs, runs_of):
            rounds += 1  # one more run of every variant, round-robin like the first ones
            pending.extend((v, rounds) for v in cmp.variants)
            view.message(f"compare: round {rounds} of at most {cmp.most_repeats()}: a pair is still undecided on "
                         f"{cmp.target_effect}")
        for index in flight.free():
            if not pending or (flight and pending[0][1] == 0) or WARMUP in {
                    s.request.folder.name for s in flight.slots_in_use}:
                break  # the warm-up runs alone
            variant, repeat = pending.pop(0)
            flight.submit((variant, repeat), index, run_request(spec, plan, store, bs, variant, repeat,
                                                                flight.cores_of(index), flight.gpus_of(index)))

    try:
        with StopFlag() as stop:
            stopped = drive(flight, stop, collect, step)
        note_calls(store, executor)
        if stopped:
            return interrupted(store, command_line, records, verb="compare")
        ok = sum(r.outcome == Outcome.ok for r in records)
        in_rounds = f" in {rounds} rounds" if cmp.target_effect else ""
        reason = (f"compare: {len(records)} runs of {len(cmp.variants)} variants at bs={bs}{in_rounds}, {ok} ok; "
                  f"the pairs and their noise bands: hlrp-ladder report {store.root}")
        store.write_state(rounds=rounds)
        store.write_state(status="done", reason=reason, exit_code=0)
    except OSError as exc:
        if not no_space(exc):
            raise
        raise stopped_by_full_disk(store, command_line, as_disk_full(exc), verb="compare") from None
    return RunResult(store, Verdict(None, reason, 0, status="done"), records)

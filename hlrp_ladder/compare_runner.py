"""Runs a compare matrix — every variant x repeat at one batch size — through the spec's executor, in parallel
where it has slots, with the same monitor, outcomes and run folders as the ladder:

    runs/<name>/<run-id>-compare/
      spec.yaml  ladder.json (kind compare: the batch size, the variants, the pairs)
      <variant>-r1/  <variant>-r2/  ...   probe folders, as a ladder's

Resumable like a ladder: finished runs are kept, the others (unfinished, interrupted, an error or a timeout the
user may have fixed) are set aside and run again.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from typing import Optional

from hlrp_ladder import compare, policy
from hlrp_ladder.flight import POLL_S, Flight, Slot
from hlrp_ladder.ladder import RunResult, interrupted, local_cores, prepare, reattach, resolve_plan
from hlrp_ladder.live import LiveView
from hlrp_ladder.probe.cgroup import safe_name
from hlrp_ladder.records import ProbeRecord, ProbeRequest
from hlrp_ladder.signals import StopFlag
from hlrp_ladder.spec import Spec, SpecError
from hlrp_ladder.store import RunStore, StoreError


def fingerprint(spec: Spec) -> str:
    """What a compare run measures: the command, overrides, env, memory, executor and the matrix."""
    data = spec.model_dump(mode="json", include={"command", "overrides", "env", "memory", "executor", "compare",
                                                 "batch_size_key", "probe", "timeout_s", "metrics_regex"})
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


WARMUP = "warmup"


def build_request(spec: Spec, plan: policy.Plan, store: RunStore, bs: int, variant: str, repeat: int,
                  cpus: Optional[list[int]]) -> ProbeRequest:
    """A run of the matrix (``repeat`` 0: the warm-up, in ``warmup/``, one validation long)."""
    cmp = spec.compare
    folder = compare.run_folder(variant, repeat) if repeat else WARMUP
    store.set_aside_folder(folder)
    argv, env = compare.effective(spec, variant, bs)
    if not repeat:
        key = spec.probe.keys.max_steps
        argv = [f"{key}={min(cmp.check_interval, cmp.max_steps)}" if key and a.startswith(f"{key}=") else a
                for a in argv]
    timeout = cmp.timeout_s or spec.timeout_s * max(1.0, cmp.max_steps / spec.probe.max_steps)
    return ProbeRequest(
        folder=store.root / folder, batch_size=bs, phase="compare", repeat=repeat, variant=variant,
        attempt=store.attempts(folder), argv=argv, env=env, cwd=os.getcwd(), rss_limit_bytes=plan.rss_limit_bytes,
        cap_bytes=plan.cap_bytes if repeat else policy.warmup_cap(plan), metric=spec.memory.metric,
        interval_s=spec.memory.sample_interval_s,
        timeout_s=timeout, kill_grace_s=spec.kill_grace_s,
        cgroup_name=safe_name(f"{spec.name}-{store.root.name}-{folder}"),
        probe_id=f"{spec.name}/{store.root.name}/{folder}/{uuid.uuid4().hex[:12]}",
        check_interval=cmp.check_interval, metrics_regex=spec.metrics_regex, cpus=cpus)


def run_compare(spec: Spec, view: LiveView, resume: Optional[str] = None,
                command_line: Optional[list[str]] = None) -> RunResult:
    if spec.compare is None:
        raise SpecError("the spec has no compare section (batch_size, variants, ...)")
    command_line = command_line or []
    executor, executor_facts = prepare(spec, view)
    reattached = []
    if resume is None:
        bs = batch_size(spec)
        plan, facts, notes = resolve_plan(spec, executor_facts)
        for note in notes:
            view.message(note)
        store = RunStore.create(spec, command_line, plan.to_json(), facts, kind="compare",
                                fingerprint=fingerprint(spec))
        store.lock()
        store.write_state(batch_size=bs, variants={n: v for n, v in spec.compare.variants.items()},
                          repeats=spec.compare.repeats)
    else:
        store = RunStore.find(spec.runs_dir, None if resume == "latest" else resume, spec.name, kind="compare")
        state = store.state()
        if state.get("fingerprint") != fingerprint(spec):
            raise StoreError(f"{store.root}: the spec changed since this compare run started; start a new one")
        store.lock()
        bs, plan = int(state["batch_size"]), policy.Plan.from_json(state["plan"])
        reattached = reattach(store, executor, view)
        store.write_state(status="running")
        facts = state.get("host") or {}
    if spec.executor.kind == "local":
        from hlrp_ladder import host

        executor.configure(facts if resume is None else host.facts(plan.cap_bytes))
    loaded = store.load().records
    records = [r for r in loaded if r.folder != WARMUP]
    have = {r.folder for r in loaded}
    # Round-robin (every variant's first run, then every second run): whatever drifts during the matrix
    # spreads over the variants instead of posing as one's cost. The warm-up goes first, alone.
    pending = [(v, k) for k in range(1, spec.compare.repeats + 1) for v in spec.compare.variants
               if compare.run_folder(v, k) not in have]
    first = next(iter(spec.compare.variants))
    if spec.compare.warmup and WARMUP not in have and records == []:
        pending.insert(0, (first, 0))
    flight = Flight(executor, spec.executor.max_parallel, local_cores(spec), view)
    for handle in reattached:
        flight.adopt((handle.request.variant, handle.request.repeat), handle)
        pending.remove((handle.request.variant, handle.request.repeat))

    def collect(slot: Slot, record: ProbeRecord) -> ProbeRecord:
        if record.folder == WARMUP:
            view.message(f"warm-up ({first}, not counted): {record.outcome.value}; the page cache holds what the "
                         f"runs read in")
        else:
            records.append(record)
        return record

    with StopFlag() as stop:
        while not stop():
            flight.poll(collect)
            for index in flight.free():
                if not pending or (flight and pending[0][1] == 0) or WARMUP in {
                        s.request.folder.name for s in flight.slots_in_use}:
                    break  # the warm-up runs alone
                variant, repeat = pending.pop(0)
                flight.submit((variant, repeat), index, build_request(spec, plan, store, bs, variant, repeat,
                                                                     flight.cores_of(index)))
            if not flight and not pending:
                break
            time.sleep(POLL_S)
        if stop():
            flight.stop(collect)
            return interrupted(store, command_line, records, verb="compare")
    ok = sum(r.outcome.value == "ok" for r in records)
    reason = (f"compare: {len(records)} runs of {len(spec.compare.variants)} variants at bs={bs}, {ok} ok; the "
              f"pairs and their noise bands: hlrp-ladder report {store.root}")
    store.write_state(status="done", reason=reason, exit_code=0)
    return RunResult(store, policy.Verdict(None, reason, 0, status="done"), records)

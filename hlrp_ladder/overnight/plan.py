"""What the long run runs: the pick (the run's, or one chosen by hand), its length, and its request."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hlrp_ladder import policy
from hlrp_ladder.ladder import long_run_steps
from hlrp_ladder.probe.cgroup import safe_name
from hlrp_ladder.records import ProbeRecord, ProbeRequest
from hlrp_ladder.masking import mask, mask_argv
from hlrp_ladder.spec import Recipe, Spec
from hlrp_ladder.store import RESULT, RunStore, StoreError

REQUEST = "request.json"


class LaunchError(StoreError):
    """The long run cannot be launched as asked; the message is one line."""


def folders(store: RunStore) -> list[Path]:
    """The long runs launched from a run, oldest first (overnight/, overnight-2/, ...)."""
    found = [p for p in store.root.glob("overnight*") if p.is_dir() and (p / REQUEST).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]) if "-" in p.name else 1)


def _next_folder(store: RunStore) -> Path:
    n = len(folders(store)) + 1
    return store.root / ("overnight" if n == 1 else f"overnight-{n}")


@dataclass
class Launch:
    batch_size: int
    max_steps: int
    request: ProbeRequest
    executor: str                        # local | slurm
    name: str                            # the tmux session (local, when tmux is installed) or the job name
    tmux: bool                           # local: starts in tmux (else a detached session with a log file)
    note: str                            # where the steps count came from, what confirmed the pick


def _pick(spec: Spec, store: RunStore, records: list[ProbeRecord], pick: str, force: bool) -> tuple[int, str]:
    verdict = policy.verdict(store.plan(spec)[0], records)
    if pick != "stable":
        try:
            bs = int(pick)
        except ValueError:
            raise LaunchError(f"--pick {pick!r}: expected 'stable' or a batch size") from None
        tested = {r.batch_size for r in records if r.outcome.value == "ok"}
        if bs not in tested and not force:
            raise LaunchError(f"--pick {bs}: no probe of this run passed at bs={bs} (ok: {sorted(tested)}); "
                              f"--force launches it anyway")
        return bs, f"bs={bs} chosen by hand (the run's pick: {verdict.pick})"
    if verdict.inconclusive:
        raise LaunchError(f"this run is inconclusive ({verdict.reason}); there is no stable pick to launch — "
                          f"--pick <bs> launches a batch size you choose")
    if verdict.pick is None:
        raise LaunchError(f"this run has no pick ({verdict.reason}); finish or resume the ladder, or choose one "
                          f"with --pick <bs>")
    if spec.stress is not None and verdict.confirmed_by != "stress" and not force:
        raise LaunchError(f"the pick bs={verdict.pick} was not confirmed by the stress phase the spec asks for; "
                          f"resume the run, or --force to launch it anyway")
    return verdict.pick, f"the run's pick, confirmed by the {verdict.confirmed_by} phase"


def _steps(spec: Spec, records: list[ProbeRecord], bs: int) -> tuple[int, str, Optional[float]]:
    """The long run's steps, where that number came from, and the step rate measured at ``bs`` (if any)."""
    night = spec.overnight
    mine = sorted((r for r in records if r.batch_size == bs and r.metrics.step_per_s),
                  key=lambda r: r.phase != "stress")
    rate = mine[0].metrics.step_per_s if mine else None
    if night.max_steps:
        return night.max_steps, f"overnight.max_steps={night.max_steps}", rate
    if not mine:
        raise LaunchError(f"overnight.hours={night.hours} needs a measured step rate at bs={bs}, and no probe of "
                          f"this run at that batch size reported one; set overnight.max_steps instead")
    return (long_run_steps(spec, mine[0]), f"overnight.hours={night.hours} x {rate:.3f} step/s (from "
            f"{mine[0].folder})", rate)


def plan_launch(spec: Spec, store: RunStore, pick: str, force: bool) -> Launch:
    if spec.overnight is None:
        raise LaunchError("the spec has no overnight section (max_steps or hours, check_interval, ...)")
    records = store.load().records
    bs, why = _pick(spec, store, records, pick, force)
    plan = store.plan(spec)[0]
    steps, how, rate = _steps(spec, records, bs)
    night = spec.overnight
    recipe = Recipe(max_steps=steps, check_interval=night.check_interval, limit_batches=night.limit_batches,
                    keys=spec.probe.keys)
    folder = _next_folder(store)
    # How long it should take, for a scheduler's time limit: the hours asked for, else the steps at the rate
    # measured at this batch size.
    expected = night.hours * 3600 if night.hours else (steps / rate if rate else None)
    # The long run gets the limits the ladder was judged by, and a gentle stop: SIGTERM, then
    # overnight.kill_grace_s to save a checkpoint and close its loggers, then SIGKILL.
    req = ProbeRequest(
        folder=folder.resolve(), batch_size=bs, phase="overnight", attempt=1,
        argv=spec.argv(bs, recipe, extra=night.overrides), env={**spec.env, **night.env}, cwd=os.getcwd(),
        rss_limit_bytes=plan.rss_limit_bytes, cap_bytes=plan.cap_bytes, metric=spec.memory.metric,
        interval_s=spec.memory.sample_interval_s, timeout_s=night.timeout_s, kill_grace_s=night.kill_grace_s,
        stop_grace_s=night.kill_grace_s, cgroup_name=safe_name(f"{spec.name}-{store.root.name}-{folder.name}"),
        probe_id=f"{spec.name}/{store.root.name}/{folder.name}/{uuid.uuid4().hex[:12]}",
        check_interval=night.check_interval, metrics_regex=spec.metrics_regex, expected_s=expected)
    name = night.tmux_session or safe_name(f"hlrp-{spec.name}-{store.root.name}-{folder.name}")
    return Launch(bs, steps, req, spec.executor.kind, name, spec.executor.kind == "local" and bool(shutil.which("tmux")),
                  f"{why}; {steps} steps from {how}")


def describe_launch(launch: Launch) -> list[str]:
    req = launch.request
    lines = [f"bs={launch.batch_size}, {launch.max_steps} steps ({launch.note})",
             f"argv: {json.dumps(mask_argv(req.argv))}",
             f"env: {json.dumps(mask({**req.env, 'HLRP_LADDER_METRICS': str(req.folder / 'metrics.jsonl')}))}",
             f"log: {req.folder / 'log.txt'}   memory: {req.folder / 'memory.csv'}   record: {req.folder / RESULT}"]
    if launch.executor == "slurm":
        lines.append(f"starts as SLURM job {launch.name!r} (sbatch), runner output in {req.folder / 'runner.log'}")
    elif launch.tmux:
        lines.append(f"starts in tmux session {launch.name!r} (tmux attach -t {launch.name})")
    else:
        lines.append(f"tmux not installed: starts as a detached session, runner output in "
                     f"{req.folder / 'runner.log'}")
    return lines

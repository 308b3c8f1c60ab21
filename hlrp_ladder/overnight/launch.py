"""What the long run runs: the pick (the run's, or one chosen by hand), its length, and its request."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hlrp_ladder.executors.core import Executor
from hlrp_ladder.probe.cgroup import safe_name
from hlrp_ladder.probe.folder import LOG, MEMORY, METRICS, REQUEST, RESULT
from hlrp_ladder.records import METRICS_ENV, Phase, ProbeRecord, ProbeRequest
from hlrp_ladder.run.ladder import long_run_steps
from hlrp_ladder.run.session import probe_request
from hlrp_ladder.run.store import RunStore, StoreError
from hlrp_ladder.search.decide import verdict as judge
from hlrp_ladder.spec.model import Spec
from hlrp_ladder.spec.sections import Recipe
from hlrp_ladder.util.masking import mask, mask_argv


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
    """The long run as it will start."""
    batch_size: int
    max_steps: int
    request: ProbeRequest
    name: str                            # the tmux session (local, when tmux is installed) or the job name
    starts: str                          # how it starts, in the executor's words
    watch: str                           # how to watch it
    note: str                            # where the steps count came from, what confirmed the pick


def _pick(spec: Spec, store: RunStore, records: list[ProbeRecord], pick: str, force: bool) -> tuple[int, str]:
    verdict = judge(store.plan(), records)
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


def plan_launch(spec: Spec, store: RunStore, executor: Executor, pick: str, force: bool) -> Launch:
    """The long run of ``store``'s ladder at ``pick`` ('stable' or a batch size), as ``executor`` would start it."""
    if spec.overnight is None:
        raise LaunchError("the spec has no overnight section (max_steps or hours, check_interval, ...)")
    records = store.load().records
    bs, why = _pick(spec, store, records, pick, force)
    plan = store.plan()
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
    req = probe_request(spec, plan, store, folder.name, batch_size=bs, phase=Phase.overnight,
                        argv=spec.argv(bs, recipe, extra=night.overrides), env={**spec.env, **night.env},
                        timeout_s=night.timeout_s, check_interval=night.check_interval,
                        kill_grace_s=night.kill_grace_s, stop_grace_s=night.kill_grace_s, expected_s=expected,
                        # a new folder: planning it (a dry run) must change nothing on disk; the first slot's GPUs,
                        # as the ladder's probes had them
                        set_aside=False, gpus=(executor.slot_gpus(spec.executor) or [None])[0])
    name = night.tmux_session or safe_name(f"hlrp-{spec.name}-{store.root.name}-{folder.name}")
    starts, watch = executor.launch_words(name, req.folder)
    return Launch(bs, steps, req, name, starts, watch, f"{why}; {steps} steps from {how}")


def launch_lines(launch: Launch) -> list[str]:
    """What ``launch-overnight`` prints before it starts anything (and all that ``--dry-run`` does)."""
    req = launch.request
    return [f"bs={launch.batch_size}, {launch.max_steps} steps ({launch.note})",
            f"argv: {json.dumps(mask_argv(req.argv))}",
            f"env: {json.dumps(mask({**req.env, METRICS_ENV: str(req.folder / METRICS)}))}",
            f"log: {req.folder / LOG}   memory: {req.folder / MEMORY}   record: {req.folder / RESULT}",
            launch.starts]

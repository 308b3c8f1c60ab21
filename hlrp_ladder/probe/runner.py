"""Runs one probe start to end under the memory monitor and writes its folder:

    argv.json  log.txt  memory.csv  metrics.jsonl  running.json (while it runs)  result.json (last)
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Optional

from hlrp_ladder.executors.core import OnSample, ProbeRequest, ShouldStop
from hlrp_ladder.probe import cgroup as cgroups
from hlrp_ladder.probe.metrics import read_metrics, read_tail
from hlrp_ladder.probe.outcome import classify
from hlrp_ladder.probe.process import alive, signal_tree, spawn
from hlrp_ladder.probe.sampler import CSV_HEADER, TreeSampler
from hlrp_ladder.records import Limits, Peaks, ProbeRecord
from hlrp_ladder.spec import mask, mask_argv
from hlrp_ladder.store import RESULT, RUNNING, write_json

METRICS_ENV = "HLRP_LADDER_METRICS"


def _env_diff(request: ProbeRequest, metrics_path: Path) -> dict[str, str]:
    return {**request.env, METRICS_ENV: str(metrics_path)}


class _Stopper:
    """What the monitor decided to do to the tree, and when to escalate to SIGKILL."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self.kill_at: Optional[float] = None

    def stop(self, reason: str, term_first: bool, grace: float, kill) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        if term_first and grace > 0:
            kill(signal.SIGTERM)
            self.kill_at = time.monotonic() + grace
        else:
            kill(signal.SIGKILL)

    def escalate(self, kill) -> None:
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            kill(signal.SIGKILL)
            self.kill_at = None


def run_probe(request: ProbeRequest, on_sample: Optional[OnSample] = None,
              should_stop: Optional[ShouldStop] = None) -> ProbeRecord:
    folder = request.folder
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / RESULT).exists():
        raise FileExistsError(f"{folder / RESULT} exists: a probe folder is used once")
    metrics_path, log_path = folder / "metrics.jsonl", folder / "log.txt"
    env_diff = _env_diff(request, metrics_path)
    write_json(folder / "argv.json", {"argv": mask_argv(request.argv), "env": mask(env_diff), "cwd": request.cwd})

    cg, cg_note = cgroups.create(request.cgroup_name, request.cap_bytes)
    if request.cap_bytes is not None and cg is None:
        cg_note += "; the cap is NOT enforced"
    oom_counter = cg.oom_counter_name if cg else "/proc/vmstat (system-wide)"
    oom_before = cg.oom_kills() if cg else cgroups.vmstat_oom_kills()

    started_at = time.time()
    try:
        proc = spawn(request.argv, {**os.environ, **env_diff}, request.cwd, log_path, cg)
    except OSError as exc:
        with open(log_path, "a") as log:
            log.write(f"hlrp-ladder: cannot start {request.argv[0]!r}: {exc.strerror or exc}\n")
        if cg:
            cg.remove()
        return _finish(request, started_at, time.time(), 127, None, None, None, oom_counter, cg, cg_note, Peaks(),
                       [], 0)
    pgid = proc.pid
    sampler = TreeSampler(proc.pid, cg, with_pss=request.metric == "pss")
    write_json(folder / RUNNING, {"pid": proc.pid, "pgid": pgid, "create_time": sampler.root.create_time(),
                                  "cgroup": str(cg) if cg else None, "orchestrator_pid": os.getpid()})

    def kill(sig: int) -> None:
        sampler.refresh(force=True)  # whoever joined the tree since the last refresh is killed too
        signal_tree(pgid, list(sampler.known.values()), cg, sig)

    peaks = Peaks()
    timeline: list[tuple[float, int, Optional[int]]] = []
    stopper = _Stopper()
    status = exited_at = None
    next_tick = time.monotonic()
    with open(folder / "memory.csv", "w", buffering=1 << 16) as csv:
        csv.write(CSV_HEADER)
        while True:
            pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                exited_at = time.time()
                status, peaks.vmhwm_bytes = os.waitstatus_to_exitcode(wait_status), usage.ru_maxrss * 1024
                proc.returncode = status  # reaped here, so Popen must not wait again
                break
            sample = sampler.sample()
            csv.write(sample.csv())
            timeline.append((sample.t, sample.rss, sample.cgroup))
            peaks.samples += 1
            peaks.sampled_rss_bytes = max(peaks.sampled_rss_bytes, sample.rss)
            peaks.max_procs = max(peaks.max_procs, sample.n_procs)
            if sample.pss is not None:
                peaks.sampled_pss_bytes = max(peaks.sampled_pss_bytes or 0, sample.pss)
            if sample.cgroup is not None:
                peaks.cgroup_sampled_bytes = max(peaks.cgroup_sampled_bytes or 0, sample.cgroup)
            if sample.gpu is not None:
                peaks.gpu_sampled_bytes = max(peaks.gpu_sampled_bytes or 0, sample.gpu)
            measured = sample.pss if request.metric == "pss" else sample.rss
            if should_stop is not None and should_stop():
                stopper.stop("interrupted", False, 0, kill)
            elif measured is not None and measured > request.rss_limit_bytes:
                stopper.stop("rss_breach", False, 0, kill)
            elif request.timeout_s is not None and sample.t > request.timeout_s:
                stopper.stop("timeout", True, request.kill_grace_s, kill)
            stopper.escalate(kill)
            if on_sample is not None:
                on_sample(request, sample)
            # Once the tree is being killed, reap it as soon as it is dead rather than a whole tick later.
            next_tick += request.interval_s if stopper.reason is None else min(request.interval_s, 0.01)
            time.sleep(max(0.0, next_tick - time.monotonic()))
    sampler.close()
    # The main process is gone; nothing it started may live on.
    leftovers = len({p.pid for p in alive(sampler.known.values())} | set(cg.pids() if cg else []))
    kill(signal.SIGKILL)
    if cg is not None:
        peaks.kernel_bytes, peaks.kernel_source = cg.peak()
    oom_after = cg.oom_kills() if cg else cgroups.vmstat_oom_kills()
    if peaks.kernel_bytes is None and peaks.vmhwm_bytes:
        # wait4's ru_maxrss: the max VmHWM of the main process and the descendants it reaped.
        peaks.kernel_bytes, peaks.kernel_source = peaks.vmhwm_bytes, "VmHWM (wait4 ru_maxrss, largest process)"
    if cg is not None:
        cg.remove()
    return _finish(request, started_at, exited_at, status, stopper.reason, oom_before, oom_after, oom_counter, cg,
                   cg_note, peaks, timeline, leftovers, sampler.start_wall)


def _finish(request: ProbeRequest, started_at: float, exited_at: float, status: int, stop_reason, oom_before,
            oom_after, oom_counter: str, cg, cg_note: str, peaks: Peaks, timeline, leftovers: int,
            timeline_start: Optional[float] = None) -> ProbeRecord:
    folder = request.folder
    log_lines = read_tail(folder / "log.txt")
    outcome, evidence = classify(status, stop_reason, oom_before, oom_after, oom_counter, log_lines)
    if leftovers:
        evidence.detail += f"; killed {leftovers} process(es) it left running"
    record = ProbeRecord(
        batch_size=request.batch_size, phase=request.phase, repeat=request.repeat, attempt=request.attempt,
        folder=folder.name,
        outcome=outcome, evidence=evidence, peaks=peaks,
        limits=Limits(metric=request.metric, rss_limit_bytes=request.rss_limit_bytes, cap_bytes=request.cap_bytes,
                      cgroup=str(cg) if cg else None, cgroup_note=cg_note),
        metrics=read_metrics(folder / "metrics.jsonl", log_lines, request.metrics_regex,
                             timeline_start or started_at, timeline),
        started_at=started_at, ended_at=exited_at, argv=mask_argv(request.argv))
    write_json(folder / RESULT, record.model_dump(mode="json"))
    (folder / RUNNING).unlink(missing_ok=True)
    return record

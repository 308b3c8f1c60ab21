"""Runs one probe start to end under the memory monitor and writes its folder:

    argv.json  log.txt  memory.csv  metrics.jsonl  running.json (while it runs)  result.json (last)

``running.json`` is written before the spawn (the cgroup and the marker the tree will carry) and again once
the process exists, so a crash at any point leaves enough to find and kill exactly what was started. Whatever
happens inside, the probe's cgroup is removed on the way out.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import psutil

from hlrp_ladder.probe import cgroup as cgroups
from hlrp_ladder.probe import gpu as gpus
from hlrp_ladder.probe.folder import (ARGV, CSV_HEADER, LOG, MEMORY, METRICS, RANKS, RESULT, RUNNING, PeakTracker,
                                      ProbeFolder, Sample)
from hlrp_ladder.probe.kernel_log import KernelLog
from hlrp_ladder.probe.metrics import LiveMetrics
from hlrp_ladder.probe.outcome import classify, rank_verdict
from hlrp_ladder.probe.process import signal_tree, spawn, still_running
from hlrp_ladder.probe.ranks import CSV_HEADER as RANKS_HEADER
from hlrp_ladder.probe.ranks import RankEnd, Ranks, srun_failures
from hlrp_ladder.probe.sampler import TreeSampler
from hlrp_ladder.records import MARKER_ENV, METRICS_ENV, Limits, Outcome, Peaks, ProbeRecord, ProbeRequest
from hlrp_ladder.util.files import DiskFull, no_space, read_tail, write_json
from hlrp_ladder.util.masking import MASK, mask, mask_argv

CSV_FLUSH_S = 0.5
OnSample = Callable[[ProbeRequest, Sample], None]   # called after every sample (the heartbeat)
ShouldStop = Callable[[], bool]                     # polled every sample: True stops the probe (Ctrl-C)


@dataclass
class Ending:
    """How the main process ended, and what the monitor saw: everything the record is made from."""
    started_at: float
    exited_at: float
    status: int                              # os.waitstatus_to_exitcode's: negative = killed by that signal
    stop_reason: Optional[str]               # what the monitor did: rss_breach | gpu_breach | timeout | interrupted
    oom_before: Optional[int]
    oom_after: Optional[int]
    oom_counter: str
    cgroup: Optional[cgroups.MemoryCgroup]
    cgroup_note: str
    peaks: Peaks
    timeline: list                           # (t, rss, cgroup, working set, gpu) per sample
    end_t: float                             # when the main process was reaped, on the sampler's clock
    leftovers: int = 0                       # processes the tree left running, killed after the main one
    victims: Optional[set[int]] = None       # pids of the tree the kernel log names as OOM-killed
    main_pid: Optional[int] = None
    gpu: gpus.GpuProbe = dataclasses.field(default_factory=gpus.GpuProbe)
    rank_end: Optional[RankEnd] = None       # a distributed rung: the rank whose end decided it
    breach_rank: Optional[int] = None        # per_rank: the rank that crossed the soft limit


def _env_diff(request: ProbeRequest, metrics_path: Path, marker: str) -> dict[str, str]:
    # A value masked on disk (request.json) is not the value: the runner's own environment carries it.
    env = {k: v for k, v in request.env.items() if v != MASK}
    return {**env, METRICS_ENV: str(metrics_path), MARKER_ENV: marker}


class _Stopper:
    """What the monitor decided to do to the tree, and when to escalate to SIGKILL."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self.kill_at: Optional[float] = None

    def stop(self, reason: str, grace: float, kill) -> None:
        """SIGTERM and SIGKILL after ``grace`` seconds, or SIGKILL at once for a grace of 0."""
        if self.reason is not None:
            return
        self.reason = reason
        if grace > 0:
            kill(signal.SIGTERM)
            self.kill_at = time.monotonic() + grace
        else:
            kill(signal.SIGKILL)

    def escalate(self, kill) -> None:
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            kill(signal.SIGKILL)
            self.kill_at = None


def _cgroup(request: ProbeRequest) -> tuple[Optional[cgroups.MemoryCgroup], str]:
    if request.cgroup == "none":
        return None, request.cgroup_note or "no memory cgroup"
    if request.cgroup == "job":
        cg, note = cgroups.enclosing()
        if cg is not None:
            note = "the job's own cgroup, capped by its scheduler; it counts this monitor too"
        if cg is not None and request.launcher == "srun" and cgroups.job_of(cg) is not None:
            # the ranks are the job's srun tasks, in a step beside this runner's: the job's cgroup holds both
            cg, note = cgroups.job_of(cg), "the job's own cgroup, its srun tasks' step included; it counts this " \
                                           "monitor too"
        return cg, note
    return cgroups.create(request.cgroup_name, request.cap_bytes, cgroups.Parent.parse(request.cgroup))


def run_probe(request: ProbeRequest, on_sample: Optional[OnSample] = None,
              should_stop: Optional[ShouldStop] = None) -> ProbeRecord:
    """Run the probe ``request`` describes under the monitor, to its record (written to ``result.json``)."""
    folder = request.folder
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / RESULT).exists():
        raise FileExistsError(f"{folder / RESULT} exists: a probe folder is used once")
    marker = request.probe_id or uuid.uuid4().hex
    env_diff = _env_diff(request, folder / METRICS, marker)
    # The GPUs first: a started MPS daemon carries the marker, so a resume after a dead runner stops it too.
    write_json(folder / RUNNING, {"pid": None, "cgroup": None, "marker": marker, "orchestrator_pid": os.getpid()})
    gpu_error = None
    try:
        gpu = gpus.prepare(request.gpu, {**os.environ, **env_diff}, {MARKER_ENV: marker})
    except gpus.GpuConfigError as exc:
        gpu, gpu_error = gpus.GpuProbe(), str(exc)
    try:
        env_diff.update(gpu.env)
        write_json(folder / ARGV, {"argv": mask_argv(request.argv), "env": mask(env_diff), "cwd": request.cwd})
        cg, cg_note = _cgroup(request)
        try:
            running = {"pid": None, "pgid": None, "create_time": None, "cgroup": str(cg) if cg else None,
                       "marker": marker, "orchestrator_pid": os.getpid(), "mps_pipe": gpu.pipe}
            write_json(folder / RUNNING, running)  # before the spawn: a crash from here on leaks nothing unknown
            return _monitor(request, cg, cg_note, marker, env_diff, running, on_sample, should_stop, gpu, gpu_error)
        finally:
            if cg is not None:
                cg.kill_all()
                cg.remove()
    finally:
        gpu.stop()


def _monitor(request: ProbeRequest, cg, cg_note: str, marker: str, env_diff: dict, running: dict,
             on_sample: Optional[OnSample], should_stop: Optional[ShouldStop], gpu: gpus.GpuProbe,
             gpu_error: Optional[str]) -> ProbeRecord:
    folder = request.folder
    if request.cap_bytes is not None and cg is None:
        cg_note += "; the cap is NOT enforced"
    elif request.cap_bytes is not None and cg is not None and cg.shared and cg.limit() is None:
        cg_note += "; it has no memory limit: the cap is NOT enforced"
    oom_counter = cg.oom_counter_name if cg else "/proc/vmstat (system-wide)"
    # An srun's tasks sit in their own step's cgroups: their OOM kills are counted there (v1), so the job's whole
    # subtree is read.
    count_ooms = (_subtree_counter(cg) if request.launcher == "srun" else cg.oom_kills) if cg else None
    # opened before the spawn: kills from now on. With ranks too: the kernel log names the rank it OOM-killed.
    kernel_log = KernelLog() if cg is None or request.ranks else None
    killed: Optional[set[int]] = set()   # pids the kernel log named as OOM-killed so far (None: unreadable)

    def read_kills() -> Optional[set[int]]:
        nonlocal killed
        if kernel_log is None:
            return None
        found = kernel_log.killed_pids()
        killed = None if found is None or killed is None else killed | found
        return killed
    oom_before = count_ooms() if cg else cgroups.vmstat_oom_kills()

    started_at = time.time()
    try:
        if gpu_error is not None:  # a GPU the spec needs is not there: nothing is started
            raise OSError(gpu_error)
        # a shared (enclosing) cgroup already holds this runner, so its children too: nothing to join
        proc = spawn(request.argv, {**os.environ, **env_diff}, request.cwd, folder / LOG,
                     None if cg is None or cg.shared else cg, request.cpus)
    except (OSError, subprocess.SubprocessError) as exc:
        with open(folder / LOG, "a") as log:
            log.write(f"hlrp-ladder: {gpu_error}\n" if gpu_error is not None else
                      f"hlrp-ladder: cannot start {request.argv[0]!r}: {getattr(exc, 'strerror', None) or exc}\n")
        if kernel_log is not None:
            kernel_log.close()
        return _finish(request, LiveMetrics(folder / METRICS, folder / LOG, request.metrics_regex, started_at,
                                            request.check_interval, request.batch_size),
                       Ending(started_at, time.time(), 127, None, None, None, oom_counter, cg, cg_note, Peaks(), [],
                              0.0))
    pgid = proc.pid
    sampler = TreeSampler(proc.pid, cg, with_pss=request.metric == "pss", gpu=gpu.reader,
                          extra=_marked(cg, marker) if request.launcher == "srun" and cg is not None else None)
    live = LiveMetrics(folder / METRICS, folder / LOG, request.metrics_regex, sampler.start_wall,
                       request.check_interval, request.batch_size)
    seen_pids: set[int] = {proc.pid}

    def kill(sig: int) -> None:
        sampler.refresh(force=True)  # whoever joined the tree since the last refresh is killed too
        seen_pids.update(sampler.known)
        signal_tree(pgid, list(sampler.known.values()), cg, sig)

    ranks = Ranks(request.ranks) if request.ranks else None
    rank_end: Optional[RankEnd] = None
    breach_rank: Optional[int] = None   # per_rank: the rank that crossed the soft limit
    ranks_csv = None
    tracker = PeakTracker()
    peaks = tracker.peaks
    timeline: list[tuple[float, int, Optional[int], Optional[int], Optional[int]]] = []
    stopper = _Stopper()
    status = exited_at = None
    flushed_at = 0.0
    next_tick = time.monotonic()
    csv = None
    try:  # from the spawn on, a full disk stops the tree: a probe nobody can record must not run on
        write_json(folder / RUNNING, {**running, "pid": proc.pid, "pgid": pgid,
                                      "create_time": sampler.root.create_time()})
        csv = open(folder / MEMORY, "w", buffering=1 << 16)
        csv.write(CSV_HEADER)
        if ranks is not None:
            ranks_csv = open(folder / RANKS, "w", buffering=1 << 16)
            ranks_csv.write(RANKS_HEADER)
        while True:
            pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                exited_at = time.time()
                status, peaks.vmhwm_bytes = os.waitstatus_to_exitcode(wait_status), usage.ru_maxrss * 1024
                proc.returncode = status  # reaped here, so Popen must not wait again
                break
            sample = sampler.sample()
            seen_pids.update(sampler.known)
            csv.write(sample.csv())
            if sample.t - flushed_at >= CSV_FLUSH_S:  # readers (the live view, status) see it within this long
                csv.flush()
                if ranks_csv is not None:
                    ranks_csv.flush()
                flushed_at = sample.t
            timeline.append((sample.t, sample.rss, sample.cgroup, sample.working_set, sample.gpu))
            live.poll(sample.t)
            tracker.add(sample)
            measured = sample.pss if request.metric == "pss" else sample.rss
            if ranks is not None:
                ranks.scan(sampler.known)
                count = count_ooms() if count_ooms is not None else None
                attributed = gpu.reader.by_pid if gpu.reader is not None and gpu.reader.attributed else None
                for row in ranks.sample(sample.t, sampler.rss_by_pid, attributed, count):
                    ranks_csv.write(row)
                if request.per_rank:  # each rank against the limit: the worst one is what is measured
                    worst = ranks.worst_rss(sampler.rss_by_pid)
                    measured, breach_rank = (worst[1], worst[0]) if worst else (None, None)  # not all found: no
                    # comparison (the tree's sum against a per-rank limit would be a false breach)
                    timeline[-1] = (sample.t, measured, *timeline[-1][2:])  # the forecast's points: the worst rank
                if stopper.reason is None and ranks.ended():
                    rank_end = ranks.decide(
                        killed=read_kills(), oom_rose=_rose(oom_before, count), agent=request.launcher == "torchrun",
                        failures=srun_failures(read_tail(folder / LOG)) if request.launcher == "srun" else {},
                        grace_s=request.rank_grace_s)
                    if rank_end is not None:
                        stopper.stop("rank_oom" if rank_end.oom else "rank_exit", 0, kill)
            if stopper.reason is not None:
                pass
            elif should_stop is not None and should_stop():
                stopper.stop("interrupted", request.stop_grace_s, kill)
            elif measured is not None and measured > request.rss_limit_bytes:
                stopper.stop("rss_breach", 0, kill)
            elif gpu.limit_bytes is not None and sample.gpu is not None and sample.gpu > gpu.limit_bytes:
                stopper.stop("gpu_breach", 0, kill)
            elif request.timeout_s is not None and sample.t > request.timeout_s:
                stopper.stop("timeout", request.kill_grace_s, kill)
            stopper.escalate(kill)
            if on_sample is not None:
                on_sample(request, sample)
            # Once the tree is being killed at once, reap it as soon as it is dead rather than a whole tick later.
            fast = stopper.reason is not None and stopper.kill_at is None
            next_tick += min(request.interval_s, 0.01) if fast else request.interval_s
            time.sleep(max(0.0, next_tick - time.monotonic()))
    except OSError as exc:
        if not no_space(exc):
            raise
        # A full disk: no timeline, no heartbeat, no record can be kept. Stop the tree now (a probe nobody can
        # watch must not run on) and say so; the run is resumed once there is room.
        kill(signal.SIGKILL)
        _reap(proc.pid)
        sampler.close()
        if kernel_log is not None:
            kernel_log.close()
        raise exc if isinstance(exc, DiskFull) else DiskFull(folder / MEMORY, exc) from None
    finally:
        for handle in (csv, ranks_csv):
            try:
                if handle is not None:
                    handle.close()
            except OSError:  # the buffer's last rows on a full disk: what was written stays
                pass
    sampler.close()
    # The main process is gone; nothing it started may live on.
    leftovers = len({p.pid for p in still_running(sampler.known.values())} | set(cg.pids() if cg else []))
    kill(signal.SIGKILL)
    if cg is not None:
        peaks.kernel_bytes, peaks.kernel_source = cg.peak()
    oom_after = count_ooms() if cg else cgroups.vmstat_oom_kills()
    read_kills()
    victims = None if killed is None or kernel_log is None else killed & seen_pids
    if kernel_log is not None:
        kernel_log.close()
    if ranks is not None:
        peaks.ranks, peaks.world_size = ranks.peaks(), ranks.world or request.ranks
        if gpu.reader is not None and gpu.reader.unread:
            for rank_peak in peaks.ranks.values():
                rank_peak.gpu_bytes = None
        if rank_end is None and stopper.reason is None and status not in (0, None):
            # The tree ended before a sample decided (torchrun's agent, or gloo's ranks failing on their own): what
            # is on record decides, the launcher having ended the others.
            rank_end = ranks.decide(killed=killed, oom_rose=_rose(oom_before, oom_after) if cg else bool(victims),
                                    failures=srun_failures(read_tail(folder / LOG)) if request.launcher == "srun"
                                    else {}, grace_s=0.0, agent=False, final=True)
            if rank_end is not None:
                rank_end.by_runner = False
    if peaks.kernel_bytes is None and peaks.vmhwm_bytes:
        # wait4's ru_maxrss: the max VmHWM of the main process and the descendants it reaped.
        peaks.kernel_bytes, peaks.kernel_source = peaks.vmhwm_bytes, "VmHWM (wait4 ru_maxrss, largest process)"
    if gpu.reader is not None:
        peaks.gpu_devices = {str(k): v for k, v in sorted(gpu.reader.peaks.items())}
        peaks.gpu_source = gpu.reader.source()
        if gpu.reader.unread:  # a peak with samples missing is no peak: the GPU is not judged on it
            peaks.gpu_sampled_bytes = None
            peaks.gpu_source += f"; {gpu.reader.unread} of {peaks.samples} samples unread (the GPU limit was not " \
                                "enforced then)"
    gpu.stop()  # the MPS daemon goes before running.json does (a resume finds what running.json names)
    return _finish(request, live, Ending(started_at, exited_at, status, stopper.reason, oom_before, oom_after,
                                         oom_counter, cg, cg_note, peaks, timeline, exited_at - sampler.start_wall,
                                         leftovers, victims if cg is None else None, proc.pid, gpu, rank_end,
                                         breach_rank if stopper.reason == "rss_breach" else None))


def _rose(before: Optional[int], now: Optional[int]) -> bool:
    return before is not None and now is not None and now > before


def _subtree_counter(cg):
    """The job's OOM kills, every folder below counted (v1 counts a kill only where the victim sat), each folder's
    largest value kept: slurmstepd removes a step's task folders when it ends, their counts with them."""
    seen: dict[str, int] = {}

    def count() -> Optional[int]:
        now = cg.subtree_oom_counts()
        if not now and not seen:
            return None
        for folder, value in now.items():
            seen[folder] = max(seen.get(folder, 0), value)
        return sum(seen.values())
    return count


def _marked(cg, marker: str):
    """Members found in the job's whole cgroup subtree by the probe's marker (an srun's tasks carry the runner's
    environment, slurmstepd and the batch script do not); each process's environment read once."""
    seen: dict[int, bool] = {}

    def find() -> list[int]:
        out = []
        for pid in cg.subtree_pids():
            if pid not in seen:
                try:
                    seen[pid] = psutil.Process(pid).environ().get(MARKER_ENV) == marker
                except (psutil.Error, OSError):
                    seen[pid] = False
            if seen[pid]:
                out.append(pid)
        return out
    return find


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _finish(request: ProbeRequest, live: LiveMetrics, end: Ending) -> ProbeRecord:
    folder = ProbeFolder(request.folder)
    tail = read_tail(folder.file(LOG))
    outcome, evidence = classify(end.status, end.stop_reason, end.oom_before, end.oom_after, end.oom_counter,
                                 tail, host_wide=end.cgroup is None, victims=end.victims,
                                 main_pid=end.main_pid)
    if end.rank_end is not None and (end.stop_reason in ("rank_oom", "rank_exit") or end.rank_end.oom
                                     or (not end.rank_end.by_runner and outcome == Outcome.error)):
        outcome, evidence = rank_verdict(outcome, evidence, end.rank_end, tail)
    elif outcome == Outcome.rss_breach and end.breach_rank is not None:
        evidence.rank, evidence.world_size = end.breach_rank, end.peaks.world_size
        evidence.detail = f"the monitor killed the tree when rank {end.breach_rank} crossed the per-rank soft limit"
    if end.stop_reason == "interrupted" and request.stop_grace_s > 0:
        evidence.detail = (f"stopped: SIGTERM, then up to {request.stop_grace_s:g} s to save its state; " +
                           ("it exited on its own" if end.status is not None and end.status >= 0 else
                            f"it ended by {evidence.signal}"))
    if end.leftovers:
        evidence.detail += f"; killed {end.leftovers} process(es) it left running"
    metrics = live.finish(end.timeline, end.end_t)
    if metrics.skipped_lines:
        evidence.detail += f"; skipped {metrics.skipped_lines} line(s) of its output over 1 MiB"
    if metrics.unread_bytes:
        evidence.detail += (f"; {metrics.unread_bytes / 2**20:.0f} MiB of its output ran too far ahead to be read for "
                            f"metrics (its end was read)")
    record = ProbeRecord(
        batch_size=request.batch_size, phase=request.phase, repeat=request.repeat, retry=request.retry,
        variant=request.variant, attempt=request.attempt, folder=folder.name,
        outcome=outcome, evidence=evidence, peaks=end.peaks,
        limits=end.gpu.record(Limits(metric=request.metric, rss_limit_bytes=request.rss_limit_bytes,
                                     cap_bytes=request.cap_bytes, cgroup=str(end.cgroup) if end.cgroup else None,
                                     cgroup_note=end.cgroup_note, per_rank=request.per_rank and bool(end.peaks.ranks))),
        metrics=metrics, started_at=end.started_at, ended_at=end.exited_at,
        argv=mask_argv(request.argv))
    folder.write_record_once(record)
    folder.file(RUNNING).unlink(missing_ok=True)
    return record

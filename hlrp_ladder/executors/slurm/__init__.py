"""The SLURM executor: each probe is one batch job whose script is the node-side probe runner, writing the probe
folder on the shared filesystem (``runs_dir`` must be visible from the nodes: preflight checks it with a real
job). ``memory.cap`` becomes the job's ``--mem``, which SLURM enforces through the job's cgroup; inside the job
the runner reads that cgroup's peak and OOM-kill counter without root.

The orchestrator polls ``scontrol`` and never waits on one job, so an orchestrator killed outright (SIGKILL, a
closed laptop) does not kill its jobs: ``run --resume`` re-attaches to the ones still running and collects the
ones that finished meanwhile. Ctrl-C cancels them (``scancel``), recorded ``interrupted``.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional

from hlrp_ladder.executors.slurm import commands
from hlrp_ladder.executors.slurm.commands import Job, SlurmError
from hlrp_ladder.executors.slurm.states import merge
from hlrp_ladder.probe import host
from hlrp_ladder.probe.folder import RESULT, RUNNER, RUNNER_LOG, SUBMITTED, ProbeFolder, read_json
from hlrp_ladder.records import Outcome, ProbeRecord, ProbeRequest
from hlrp_ladder.spec.sections import ExecutorSpec, SlurmSettings
from hlrp_ladder.util.files import umask, write_json

JOB_SCRIPT = "job.py"
RECORD_WAIT_S = 15.0     # after the job ended: how long the runner's record may take to show (a shared FS)
CONTROLLER_WAIT_S = 300.0  # how long SLURM may not answer about a job before the probe is given up
MIB = 2**20


def job_script(folder: Path) -> str:
    """The batch script: the runner itself, in Python (``#!`` this interpreter), so no shell is involved."""
    return (f"#!{sys.executable}\n"
            f"# hlrp-ladder probe job: the node-side runner on {folder}\n"
            f"import sys\n"
            f"from hlrp_ladder.probe.node import main\n"
            f"sys.exit(main([{str(folder)!r}]))\n")


def time_limit(settings: SlurmSettings, timeout_s: Optional[float], expected_s: Optional[float]) -> Optional[str]:
    """--time: the long run's from how long it should take (+10 %, at least 10 minutes more); a probe's from
    the spec, else from its timeout (+2 minutes: the runner enforces the timeout itself, SLURM's is a
    backstop)."""
    if expected_s:
        return commands.format_minutes(math.ceil(expected_s / 60 + max(10, expected_s / 600)))
    if settings.time:
        return settings.time
    if timeout_s:
        return commands.format_minutes(math.ceil(timeout_s / 60) + 2)
    return None


class SlurmHandle:
    def __init__(self, request: ProbeRequest, job_id: str, submitted_at: float, poll_s: float = 1.0):
        self.request, self.job_id, self.submitted_at, self.poll_s = request, job_id, submitted_at, poll_s
        self.cancelled_at: Optional[float] = None
        self.ended_at: Optional[float] = None
        self._job: Optional[Job] = None
        self._answered_at: Optional[float] = None   # when the controller (or accounting) last answered
        self._read_at = float("-inf")
        self.last_error = ""

    @property
    def folder(self) -> Path:
        return self.request.folder

    def job(self, fresh: bool = False) -> Optional[Job]:
        """The job's state, read at most every ``poll_s`` (unless ``fresh``); None once SLURM forgot it."""
        if fresh or time.monotonic() - self._read_at >= self.poll_s:
            try:
                self._job = commands.job(self.job_id)
                self._answered_at = time.monotonic()
                self.last_error = ""
            except SlurmError as exc:  # a controller that does not answer for a moment: keep the last state
                self.last_error = str(exc)
            self._read_at = time.monotonic()
        return self._job

    def state(self) -> str:
        job = self.job()
        if job is None:
            return "pending" if self._answered_at is None else "ended"
        if job.state == "PENDING":
            return "pending"
        return "ended" if job.terminal else "running"

    def poll(self) -> Optional[ProbeRecord]:
        job = self.job()
        folder = ProbeFolder(self.folder)
        if self._answered_at is None:  # SLURM has not answered yet: nothing is known
            if time.time() - self.submitted_at < CONTROLLER_WAIT_S:
                return None
            return folder.substitute(self.request, Outcome.error, f"SLURM did not answer about job {self.job_id} for "
                                     f"{CONTROLLER_WAIT_S:.0f} s", self.last_error or None, self.submitted_at)
        if job is not None and not job.terminal:
            if job.state == "PENDING" and self.cancelled_at is None and self.request.timeout_s is not None \
                    and time.time() - self.submitted_at > self.request.timeout_s:
                return self._never_started(job)
            if self.cancelled_at is not None and time.monotonic() - self.cancelled_at > \
                    self.request.stop_grace_s + 15:
                self._scancel()  # the runner did not stop as asked: SLURM kills the whole job
                self.cancelled_at = time.monotonic()
            return None
        record = folder.record()
        if record is None:
            started = (self.folder / RUNNER).exists()
            # the job is over; a runner's record may still be on its way through a shared filesystem
            self.ended_at = self.ended_at or time.monotonic()
            if started and time.monotonic() - self.ended_at < RECORD_WAIT_S:
                return None
            what = job.words() if job is not None else f"SLURM job {self.job_id}: unknown to the controller and " \
                                                       f"to accounting"
            detail = (f"the job ended and its runner left no record (see {folder.file(RUNNER_LOG)})" if started
                      else "the job ended before its runner started")
            record = folder.substitute(self.request, Outcome.error, detail, what, self.submitted_at)
        if record.evidence.scheduler is None and job is not None:
            record = merge(job, record, self.cancelled_at is not None)
            folder.write_record(record)
        return record

    def _scancel(self, batch_signal: Optional[str] = None) -> None:
        try:
            commands.scancel(self.job_id, batch_signal)
        except SlurmError as exc:  # the next poll tries again; the state says what happened
            self.last_error = str(exc)

    def _never_started(self, job: Job) -> ProbeRecord:
        self._scancel()
        waited = time.time() - self.submitted_at
        folder = ProbeFolder(self.folder)
        record = folder.substitute(
            self.request, Outcome.error, f"the job never started: still pending after {waited:.0f} s (timeout_s); "
            f"cancelled", job.words(), self.submitted_at)
        record.evidence.scheduler = job.words()
        folder.write_record(record)
        return record

    def cancel(self) -> None:
        if self.cancelled_at is not None:
            return
        self.cancelled_at = time.monotonic()
        job = self.job(fresh=True)
        # a running job: SIGTERM to its batch script, the runner, which stops the probe as its request says (at
        # once; the long run with its grace) — a plain scancel would SIGKILL the trainer after KillWait
        self._scancel("TERM" if job is not None and job.state == "RUNNING" else None)

    def waitable(self) -> Optional[int]:
        return None  # a job's end is known only by asking SLURM: polled

    def where(self) -> str:
        job = self._job or self.job()
        if job is None:
            return f"SLURM job {self.job_id}"
        reason = f", {job.reason}" if job.state == "PENDING" and job.reason and job.reason != "None" else ""
        node = f" on {job.node}" if job.state == "RUNNING" and job.node else ""
        return f"SLURM job {self.job_id} ({job.state}{reason}{node})"


class SlurmExecutor:
    name = "slurm"

    def __init__(self, settings: Optional[SlurmSettings] = None, spec_name: str = "hlrp"):
        self.settings, self.spec_name = settings or SlurmSettings(), spec_name
        self._facts: Optional[dict] = None

    @staticmethod
    def from_submitted(info: dict) -> "SlurmExecutor":
        return SlurmExecutor(SlurmSettings(poll_s=float(info.get("poll_s", 1.0))), info.get("spec", "hlrp"))

    def usable_memory(self) -> int:
        """The partition's smallest node's RealMemory (here's, when SLURM does not say)."""
        return self._partition()["usable_bytes"] or host.usable_memory()

    def facts(self, cap_bytes: Optional[int]) -> dict:
        return {**self._partition(), "cap_enforced": None if cap_bytes is None else True}

    def configure(self, facts: dict) -> None:
        """Nothing to configure: each job is capped by its own ``--mem``."""

    def session(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def sweep(self) -> list[str]:
        return []

    def slot_cores(self, spec: ExecutorSpec) -> Optional[list[list[int]]]:
        return None  # SLURM gives each job its own --cpus-per-task

    def slot_gpus(self, spec: ExecutorSpec) -> Optional[list[list[int]]]:
        return None  # SLURM gives each job its own --gres=gpu:N

    def launch_words(self, name: str, folder: Path) -> tuple[str, str]:
        return (f"starts as SLURM job {name!r} (sbatch), runner output in {folder / RUNNER_LOG}",
                f"tail -f {folder / 'log.txt'}")

    def prepare(self, request: ProbeRequest) -> ProbeRequest:
        # SLURM caps the job's cgroup at --mem; the runner watches that cgroup (it counts the runner too)
        return request.model_copy(update={"cgroup": "job", "cgroup_note": ""})

    def sbatch_args(self, request: ProbeRequest, name: str) -> list[str]:
        s = self.settings
        # --no-requeue: a job whose node fails is not silently run again (into the same folder); the executor
        # sees NODE_FAIL and the ladder retries the probe in a folder of its own.
        args = [f"--job-name={name}", f"--output={request.folder / 'runner.log'}", "--open-mode=append",
                f"--chdir={request.cwd}", "--export=ALL", "--no-requeue", f"--cpus-per-task={s.cpus_per_task}"]
        if request.cap_bytes is not None:
            args.append(f"--mem={math.ceil(request.cap_bytes / MIB)}M")
        if request.launcher == "srun":  # the runner's srun starts the ranks as the job's tasks, on its node
            args += [f"--ntasks={request.ranks}", "--nodes=1"]
        if request.gpu is not None and request.gpu.count and not s.gres:
            args.append(f"--gres=gpu:{request.gpu.count}")
        limit = time_limit(s, request.timeout_s, request.expected_s)
        if limit:
            args.append(f"--time={limit}")
        for flag, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos), ("gres", s.gres),
                            ("constraint", s.constraint)):
            if value:
                args.append(f"--{flag}={value}")
        return args + list(s.extra_args)

    def submit(self, request: ProbeRequest, detached: bool = False, name: Optional[str] = None) -> SlurmHandle:
        """sbatch the runner on ``request.folder``; a job outlives the orchestrator either way (``detached``
        changes nothing here). A rejected submission is the probe's record, with sbatch's own line."""
        request = self.prepare(request)
        folder = request.folder
        ProbeFolder(folder).open(request)
        script = folder / JOB_SCRIPT
        script.write_text(job_script(folder))
        script.chmod(0o755 & ~umask())
        submitted_at = time.time()
        job_name = name or f"hlrp-{self.spec_name}-{folder.name}"
        try:
            job_id = commands.sbatch(self.sbatch_args(request, job_name), str(script), {**os.environ, **request.env})
        except SlurmError as exc:
            write_json(folder / SUBMITTED, {"executor": self.name, "job_id": None, "submitted_at": submitted_at,
                                            "error": str(exc)})
            ProbeFolder(folder).substitute(request, Outcome.error, "sbatch rejected the job: it never started",
                                           str(exc), submitted_at)
            return _Rejected(request)
        try:
            write_json(folder / SUBMITTED, {"executor": self.name, "job_id": job_id, "job_name": job_name,
                                            "submitted_at": submitted_at, "poll_s": self.settings.poll_s,
                                            "spec": self.spec_name, "detached": detached})
        except OSError:  # a job nobody could find again must not run: cancel it, then say why
            try:
                commands.scancel(job_id)
            except SlurmError:
                pass
            raise
        return SlurmHandle(request, job_id, submitted_at, self.settings.poll_s)

    def reattach(self, folder: Path) -> Optional[SlurmHandle]:
        info = read_json(folder / SUBMITTED) or {}
        if not info.get("job_id"):
            return None
        try:
            request = ProbeFolder(folder).request()
            known = commands.job(info["job_id"]) is not None
        except (OSError, ValueError, SlurmError):
            return None
        if not known and not (folder / RESULT).exists():
            return None
        return SlurmHandle(request, info["job_id"], float(info.get("submitted_at", time.time())),
                           float(info.get("poll_s", self.settings.poll_s)))

    def cleanup(self, folder: Path) -> int:
        """An unfinished probe whose job is still queued or running is cancelled (it is not re-attached only
        when the run is not resumed: nothing of ours runs on unwatched)."""
        info = read_json(folder / SUBMITTED) or {}
        if not info.get("job_id"):
            return 0
        try:
            job = commands.job(info["job_id"])
            if job is not None and not job.terminal:
                commands.scancel(info["job_id"])
                return 1
        except SlurmError:
            pass
        return 0

    def _partition(self) -> dict:
        """The machines probes run on: the partition's nodes (the smallest, for percentages); read once."""
        if self._facts is None:
            self._facts = self._read_partition()
        return self._facts

    def _read_partition(self) -> dict:
        out = {"name": "SLURM", "cores": None, "ram_bytes": None, "usable_bytes": None, "cgroup": "job",
               "cgroup_parent": None, "cgroup_note": "SLURM enforces --mem through the job's cgroup",
               "executor": "slurm"}
        try:
            parts = commands.show("partition", self.settings.partition) if self.settings.partition else \
                [p for p in commands.show("partition") if p.get("Default") == "YES"]
            nodes = commands.show("node")
        except SlurmError:
            return out
        if not parts:
            return out
        names = expand_hostlist(parts[0].get("Nodes", ""))
        mine = [n for n in nodes if n.get("NodeName") in names] or nodes
        memory = [int(n["RealMemory"]) * MIB for n in mine if n.get("RealMemory", "").isdigit()]
        cpus = [int(n["CPUTot"]) for n in mine if n.get("CPUTot", "").isdigit()]
        out.update(name=f"SLURM partition {parts[0].get('PartitionName')} ({len(mine)} node(s))",
                   cores=min(cpus) if cpus else None, ram_bytes=min(memory) if memory else None,
                   usable_bytes=min(memory) if memory else None)
        return out


class _Rejected:
    """A submission sbatch refused: its record is already written."""

    def __init__(self, request: ProbeRequest):
        self.request = request

    def poll(self) -> Optional[ProbeRecord]:
        return ProbeFolder(self.request.folder).record()

    def cancel(self) -> None:
        pass

    def state(self) -> str:
        return "ended"

    def waitable(self) -> Optional[int]:
        return None

    def where(self) -> str:
        return "not submitted (sbatch refused it)"


def expand_hostlist(nodes: str) -> set[str]:
    """'node[1-3],gpu7' -> {'node1', 'node2', 'node3', 'gpu7'} (enough of SLURM's hostlist syntax for a
    partition's node list)."""
    out: set[str] = set()
    for prefix, ranges, single in re.findall(r"([\w.-]+)\[([\d,-]+)\]|([\w.-]+)", nodes):
        if single:
            out.add(single)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            for n in range(int(lo), int(hi or lo) + 1):
                out.add(f"{prefix}{n:0{width}d}")
    return out

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
import functools
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
from hlrp_ladder.executors.slurm.watcher import MAX_S, MIN_S, Watcher
from hlrp_ladder.probe import host
from hlrp_ladder.probe.folder import RESULT, RUNNER, RUNNER_LOG, SUBMITTED, ProbeFolder, read_json
from hlrp_ladder.records import Outcome, ProbeRecord, ProbeRequest
from hlrp_ladder.spec.sections import ExecutorSpec, SlurmSettings
from hlrp_ladder.util.files import umask, write_json

JOB_SCRIPT = "job.py"
RECORD_WAIT_S = 15.0     # after the job ended: how long the runner's record may take to show (a shared FS)
CONTROLLER_WAIT_S = 300.0  # how long SLURM may not answer about a job before the probe is given up
SETTLE_WAIT_S = 30.0    # on resume: how long a job whose runner wrote its record may take to end
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
    """One probe's job, its state read through the run's :class:`Watcher` (shared by all of its jobs)."""

    def __init__(self, request: ProbeRequest, job_id: str, submitted_at: float, watcher: Watcher,
                 cancelled: bool = False):
        self.request, self.job_id, self.submitted_at, self.watcher = request, job_id, submitted_at, watcher
        # cancelled by us, maybe by an orchestrator that is gone (submitted.json says so): CANCELLED is then ours
        self.cancelled_at: Optional[float] = time.monotonic() if cancelled else None
        self.ended_at: Optional[float] = None
        self.watching_since = time.monotonic()   # SLURM's silence is measured from here, not from the submission
        self.record_seen_at: Optional[float] = None
        watcher.register(job_id)

    @property
    def folder(self) -> Path:
        return self.request.folder

    @property
    def last_error(self) -> str:
        return self.watcher.last_error

    def job(self) -> Optional[Job]:
        """The job's state as the watcher last read it (it polls when due); None before the first answer and
        once neither the controller nor accounting knows the job."""
        return self.watcher.job(self.job_id)

    def state(self) -> str:
        entry = self.watcher.entry(self.job_id)
        if not entry.answered:
            return "pending"
        if entry.settled:  # what poll() goes by: ended once SLURM (and accounting) have had their say
            return "ended"
        if entry.job is None or entry.job.state == "PENDING":
            return "pending"
        return "running"

    def poll(self) -> Optional[ProbeRecord]:
        entry = self.watcher.entry(self.job_id)
        job = entry.job
        folder = ProbeFolder(self.folder)
        if not entry.answered:  # SLURM has not answered yet: nothing is known
            if time.monotonic() - self.watching_since < CONTROLLER_WAIT_S:
                return None
            silent = f"SLURM did not answer about job {self.job_id} for {CONTROLLER_WAIT_S:.0f} s"
            record = folder.record()
            if record is not None:  # never a runner's record overwritten for SLURM's silence
                record = record.model_copy(deep=True)
                record.evidence.scheduler = f"{silent} ({self.last_error or 'no answer'}): the runner's record alone"
                folder.write_record(record)
                return self._end(record)
            return self._end(folder.substitute(self.request, Outcome.error, silent, self.last_error or None,
                                               self.submitted_at))
        if not entry.settled:
            if (self.folder / RESULT).exists():
                if self.record_seen_at is None:  # the runner is done: the job ends within moments, ask soon (once)
                    self.record_seen_at = time.monotonic()
                    self.watcher.nudge(self.job_id)
                forgotten = job is None or job.source == "sacct"
                if not (forgotten and time.monotonic() - self.record_seen_at > RECORD_WAIT_S):
                    return None
                # the controller forgot the job and accounting still calls it running: the record decides
            elif job is not None and not job.terminal:
                if job.state == "PENDING" and self.cancelled_at is None and self.request.timeout_s is not None \
                        and time.time() - self.submitted_at > self.request.timeout_s:
                    return self._never_started(job)
                if self.cancelled_at is not None and time.monotonic() - self.cancelled_at > \
                        self.request.stop_grace_s + 15:
                    self._scancel()  # the runner did not stop as asked: SLURM kills the whole job
                    self.cancelled_at = time.monotonic()
                return None
            else:
                return None  # ended, and accounting not heard yet (a few polls at most)
        record = folder.record()
        if record is None:
            started = (self.folder / RUNNER).exists()
            # the job is over; a runner's record may still be on its way through a shared filesystem
            self.ended_at = self.ended_at or time.monotonic()
            if started and time.monotonic() - self.ended_at < RECORD_WAIT_S:
                return None
            what = job.words() if job is not None else self._unknown()
            detail = (f"the job ended and its runner left no record (see {folder.file(RUNNER_LOG)})" if started
                      else "the job ended before its runner started")
            record = folder.substitute(self.request, Outcome.error, detail, what, self.submitted_at)
            if job is None:  # nothing from SLURM either: say so (not "the runner's record alone": there is none)
                record.evidence.scheduler = what
                folder.write_record(record)
        if record.evidence.scheduler is None:
            record = merge(job, record, self.cancelled_at is not None) if job is not None else \
                self._record_alone(record)
            folder.write_record(record)
        return self._end(record)

    def _end(self, record: ProbeRecord) -> ProbeRecord:
        self.watcher.forget(self.job_id)
        return record

    def _unknown(self) -> str:
        if self.watcher.accounting_error:
            why = f"accounting did not answer ({self.watcher.accounting_error})"
        elif not self.watcher.has_accounting():
            why = f"no accounting (AccountingStorageType={self.watcher.accounting() or 'unknown'})"
        else:
            why = "accounting (sacct) does not know it either"
        return f"SLURM job {self.job_id}: no longer known to the controller (purged after MinJobAge) and {why}"

    def _record_alone(self, record: ProbeRecord) -> ProbeRecord:
        """Neither the controller nor accounting knows the job any more: the runner's record is all there is, and
        the evidence says so (never a lost job while a record exists)."""
        record = record.model_copy(deep=True)
        record.evidence.scheduler = f"{self._unknown()}: classified from the runner's record alone"
        return record

    def _scancel(self, batch_signal: Optional[str] = None) -> None:
        try:
            commands.scancel(self.job_id, batch_signal)
        except SlurmError as exc:  # the next poll tries again; the state says what happened
            self.watcher.last_error = str(exc)
        self.watcher.nudge(self.job_id)

    def _never_started(self, job: Job) -> ProbeRecord:
        self._scancel()
        waited = time.time() - self.submitted_at
        folder = ProbeFolder(self.folder)
        record = folder.substitute(
            self.request, Outcome.error, f"the job never started: still pending after {waited:.0f} s (timeout_s); "
            f"cancelled", job.words(), self.submitted_at)
        record.evidence.scheduler = job.words()
        folder.write_record(record)
        return self._end(record)

    def cancel(self) -> None:
        if self.cancelled_at is not None:
            return
        self.cancelled_at = time.monotonic()
        mark_cancelled(self.folder)
        # a handle just found again (`stop` of the long run) is asked about now, within the watcher's cadence: how
        # to stop it depends on its state
        job = self.watcher.job(self.job_id)
        # a running job: SIGTERM to its batch script, the runner, which stops the probe as its request says (at
        # once; the long run with its grace) — a plain scancel would SIGKILL the trainer after KillWait
        self._scancel("TERM" if job is not None and job.state == "RUNNING" else None)

    def waitable(self) -> Optional[int]:
        return None  # a job's end is known only by asking SLURM: polled

    def where(self) -> str:
        job = self.watcher.cached(self.job_id)
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
        # one watcher for every job this orchestrator follows: one squeue per poll, whatever their number, never
        # more than one a second (a spec's poll_s below 1 s is raised to it)
        poll_s = max(MIN_S, self.settings.poll_s)
        self.watcher = Watcher(min_s=poll_s, max_s=max(MAX_S, poll_s))

    @staticmethod
    def from_submitted(info: dict) -> "SlurmExecutor":
        """The executor of a probe folder found again (status, stop, launch-overnight): one per process and
        setting, so the folders of one command share one watcher (one squeue for all of them)."""
        return _found_again(float(info.get("poll_s", 1.0)), info.get("spec", "hlrp"))

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
        return SlurmHandle(request, job_id, submitted_at, self.watcher)

    def reattach(self, folder: Path) -> Optional[SlurmHandle]:
        """A handle on the probe's job, whatever became of it: the watcher asks SLURM about all re-attached jobs
        in one poll, and the handle's record says what it found (still running, ended meanwhile, or purged and
        classified from the runner's record, or from nothing: an error, run again)."""
        info = read_json(folder / SUBMITTED) or {}
        if not info.get("job_id"):
            return None
        try:
            request = ProbeFolder(folder).request()
        except (OSError, ValueError):
            return None
        return SlurmHandle(request, str(info["job_id"]), float(info.get("submitted_at", time.time())), self.watcher,
                           cancelled=bool(info.get("cancelled_at")))

    def settle(self, folders: list[Path], wait_s: float = SETTLE_WAIT_S) -> list[str]:
        """Finished probes whose record lacks SLURM's evidence (the orchestrator was gone when their jobs ended):
        their jobs' states merged in now, from one squeue and one sacct for all of them (from the record alone
        where neither knows the job any more, saying so). A note for each."""
        handles = []
        for folder in folders:
            info = read_json(folder / SUBMITTED) or {}
            record = ProbeFolder(folder).record()
            if info.get("job_id") and record is not None and record.evidence.scheduler is None:
                handle = self.reattach(folder)
                if handle is not None:
                    handles.append(handle)
        notes, deadline = [], time.monotonic() + wait_s
        while handles and time.monotonic() < deadline:
            for handle in list(handles):
                record = handle.poll()
                if record is not None:
                    handles.remove(handle)
                    notes.append(f"{handle.folder.name}: {record.outcome.value}; {record.evidence.scheduler}")
            if handles:
                time.sleep(0.1)
        for handle in handles:  # still not ended after the wait: its record stands as the runner wrote it
            self.watcher.forget(handle.job_id)
            notes.append(f"{handle.folder.name}: {handle.where()} has not ended after {wait_s:.0f} s; the runner's "
                         f"record stands without SLURM's word")
        return notes

    def cancel_all(self, handles: list) -> None:
        """Ctrl-C: every job of the run cancelled in one ``scancel`` call, pending or running (SLURM sends SIGTERM
        to every process of each job: the runner records its probe interrupted; SLURM kills what is left after
        KillWait). ``--batch --signal`` would spare the trainer but blocks on a pending job (measured), and a
        probe is stopped at once anyway."""
        mine = [h for h in handles if isinstance(h, SlurmHandle) and h.cancelled_at is None]
        for handle in handles:
            if not isinstance(handle, SlurmHandle):
                handle.cancel()
        if not mine:
            return
        for handle in mine:
            handle.cancelled_at = time.monotonic()
            mark_cancelled(handle.folder)
            self.watcher.nudge(handle.job_id)
        try:
            commands.scancel([h.job_id for h in mine])
        except SlurmError as exc:  # each handle's overdue stop tries again, one by one
            self.watcher.last_error = str(exc)

    def calls(self) -> dict[str, int]:
        """The SLURM tools this process ran (sbatch, squeue, sacct, scancel, scontrol), by name, and the watcher's
        polls: a run's record of how hard it leaned on the controller."""
        return {**dict(sorted(commands.CALLS.items())), "polls": self.watcher.polls}

    def cleanup(self, folder: Path) -> int:
        """An unfinished probe whose job is still queued or running is cancelled (it is not re-attached only
        when the run is not resumed: nothing of ours runs on unwatched)."""
        info = read_json(folder / SUBMITTED) or {}
        if not info.get("job_id"):
            return 0
        job_id = str(info["job_id"])
        try:  # a rare path (a folder no handle follows): one direct look
            job = commands.queue([job_id]).get(job_id)
            if job is not None and not job.terminal:
                commands.scancel(job_id)
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
            parts = commands.partitions(self.settings.partition)
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


@functools.lru_cache(maxsize=16)
def _found_again(poll_s: float, spec_name: str) -> SlurmExecutor:
    return SlurmExecutor(SlurmSettings(poll_s=poll_s), spec_name)


def mark_cancelled(folder: Path) -> None:
    """The cancel said in the probe folder (submitted.json), before SLURM hears it: an orchestrator that resumes
    after this one died takes the job's CANCELLED for ours, not for an admin's."""
    info = read_json(folder / SUBMITTED)
    if info and not info.get("cancelled_at"):
        try:
            write_json(folder / SUBMITTED, {**info, "cancelled_at": time.time()})
        except OSError:  # the cancel goes on; only a later resume would read the CANCELLED as someone else's
            pass


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

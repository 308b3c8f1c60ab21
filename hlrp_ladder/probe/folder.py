"""One probe folder on disk: the only place that knows its file names and formats.

Every executor, the node-side runner, the run store, the long run's status and the report read and write a probe
through :class:`ProbeFolder`::

    request.json    what to run (written by the executor's submit; secrets masked)
    submitted.json  how to find it again: the executor, a pid or a job id (the executor)
    runner.json     who runs it, where (the node-side runner)
    argv.json       exactly what was run, and the environment it added (secrets masked)
    log.txt         the trainer's stdout and stderr
    memory.csv      one row per sample: t, rss, pss, n_procs, cgroup, gpu, working_set
    ranks.csv       a distributed rung: one row per rank per sample: t, rank, rss, gpu
    metrics.jsonl   what the trainer reported (the metrics protocol)
    running.json    while it runs: what to find and kill if the monitor dies (pid, start time, marker, cgroup)
    status.json     a heartbeat: memory now and at peak
    runner.log      the runner's own output
    result.json     the record, written last and once (by the runner; by the executor only when the runner
                    could not)
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from pydantic import ValidationError

from hlrp_ladder.records import Evidence, Limits, Outcome, Peaks, ProbeRecord, ProbeRequest
from hlrp_ladder.util.files import atomic_write, read_tail, write_json, write_json_once
from hlrp_ladder.util.masking import mask, mask_argv

REQUEST, SUBMITTED, RUNNER, STATUS, ENV_FILE = "request.json", "submitted.json", "runner.json", "status.json", ".env.json"
ARGV, LOG, RUNNER_LOG, MEMORY, METRICS = "argv.json", "log.txt", "runner.log", "memory.csv", "metrics.jsonl"
RESULT, LATE_RESULT, RUNNING = "result.json", "result.late.json", "running.json"
RANKS = "ranks.csv"
CSV_HEADER = "t,rss,pss,n_procs,cgroup,gpu,working_set\n"


@dataclass(frozen=True)
class Sample:
    """One row of ``memory.csv``: the probe's tree at one moment."""
    t: float                       # seconds since the probe started
    rss: int                       # summed over the tree (double-counts pages shared by forked workers)
    pss: Optional[int]             # summed proportional set size, when the metric is pss
    n_procs: int
    cgroup: Optional[int]          # bytes charged to the probe's cgroup
    gpu: Optional[int] = None      # GPU memory used by the tree's processes (NVML), where there is a GPU
    working_set: Optional[int] = None  # cgroup usage less its inactive file cache (see cgroup.working_set)

    def csv(self) -> str:
        return f"{self.t:.3f},{self.rss},{_cell(self.pss)},{self.n_procs},{_cell(self.cgroup)},{_cell(self.gpu)}," \
               f"{_cell(self.working_set)}\n"

    @staticmethod
    def parse(line: str) -> Optional["Sample"]:
        """A row back; None for the header or a torn line (a reader may catch the runner mid-write)."""
        parts = line.strip().split(",")
        if len(parts) != 7 or not parts[0] or parts[0] == "t":
            return None
        try:
            num = lambda x: int(x) if x else None  # noqa: E731
            return Sample(float(parts[0]), int(parts[1]), num(parts[2]), int(parts[3]), num(parts[4]),
                          num(parts[5]), num(parts[6]))
        except ValueError:
            return None


def _cell(value: Optional[int]) -> str:
    return "" if value is None else str(value)


@dataclass
class PeakTracker:
    """The maxima over a probe's samples — one bookkeeping for the runner's record, the heartbeat and a record
    rebuilt from ``memory.csv``."""
    peaks: Peaks = field(default_factory=Peaks)

    def add(self, sample: Sample) -> None:
        p = self.peaks
        p.samples += 1
        p.sampled_rss_bytes = max(p.sampled_rss_bytes, sample.rss)
        p.max_procs = max(p.max_procs, sample.n_procs)
        for name, value in (("sampled_pss_bytes", sample.pss), ("cgroup_sampled_bytes", sample.cgroup),
                            ("working_set_sampled_bytes", sample.working_set), ("gpu_sampled_bytes", sample.gpu)):
            if value is not None:
                setattr(p, name, max(getattr(p, name) or 0, value))


def read_json(path: Path) -> Optional[dict]:
    """A JSON file, or None when it is missing or not whole."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ProbeFolder:
    """A probe folder: ``ProbeFolder(path).record()``, ``.last_sample()``, ``.file(LOG)``..."""
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- the request -------------------------------------------------------------------------------------
    def open(self, request: ProbeRequest) -> None:
        """What every submit does first: the folder, used once, with its ``request.json``."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.file(RESULT).exists():
            raise FileExistsError(f"{self.file(RESULT)} exists: a probe folder is used once")
        self.write_request(request)

    def write_request(self, request: ProbeRequest) -> None:
        """request.json, with the environment's secrets masked (the real values reach the runner through its own
        environment, or the env file of a detached start)."""
        data = request.model_dump(mode="json")
        data["env"] = mask(data["env"])
        write_json(self.file(REQUEST), data)

    def request(self) -> ProbeRequest:
        return ProbeRequest.model_validate_json(self.file(REQUEST).read_text())

    def write_env(self, env: dict[str, str]) -> Path:
        """The environment for a detached runner through a file only the owner can read: on a command line
        (``tmux new-session -e K=V``) every user of the machine could read a secret in /proc/*/cmdline."""
        path = self.file(ENV_FILE)
        atomic_write(path, json.dumps(env), private=True)
        return path

    def take_env(self) -> Optional[dict[str, str]]:
        """The env file's environment, read once and deleted; None when there is none."""
        path = self.file(ENV_FILE)
        env = read_json(path)
        path.unlink(missing_ok=True)
        return env

    def json(self, name: str) -> Optional[dict]:
        return read_json(self.file(name))

    # ---- the record --------------------------------------------------------------------------------------
    def record(self) -> Optional[ProbeRecord]:
        """The record, or None while there is none (or it is not whole)."""
        try:
            return ProbeRecord.model_validate_json(self.file(RESULT).read_text())
        except (OSError, ValueError, ValidationError):
            return None

    def write_record(self, record: ProbeRecord) -> None:
        write_json(self.file(RESULT), record.model_dump(mode="json"))

    def write_record_once(self, record: ProbeRecord) -> bool:
        """The record, unless one is there already (an executor wrote it, its job lost with its node, say): then it
        is kept as ``result.late.json`` for a person to read, and False."""
        if write_json_once(self.file(RESULT), record.model_dump(mode="json")):
            return True
        write_json(self.file(LATE_RESULT), record.model_dump(mode="json"))
        return False

    # ---- the timeline ------------------------------------------------------------------------------------
    def samples(self) -> Iterator[Sample]:
        try:
            with open(self.file(MEMORY)) as handle:
                for line in handle:
                    sample = Sample.parse(line)
                    if sample is not None:
                        yield sample
        except OSError:
            return

    def _tail(self, name: str, limit: int) -> Optional[list[str]]:
        """The whole lines among the last ``limit`` bytes of a growing file (the first line of a tail is cut, so it
        is left out); None when the file cannot be read."""
        try:
            with open(self.file(name), "rb") as handle:
                handle.seek(0, 2)
                size = handle.tell()
                handle.seek(max(0, size - limit))
                lines = handle.read().decode("ascii", "replace").splitlines()
        except OSError:
            return None
        return lines[1:] if size > limit else lines

    def last_ranks(self) -> dict[int, tuple[float, int, Optional[int]]]:
        """A distributed probe's ranks now: rank -> (t, RSS, GPU bytes) of its newest row in ``ranks.csv``."""
        out: dict[int, tuple[float, int, Optional[int]]] = {}
        for line in self._tail(RANKS, 4096) or []:
            parts = line.split(",")
            try:
                out[int(parts[1])] = (float(parts[0]), int(parts[2]), int(parts[3]) if parts[3] else None)
            except (IndexError, ValueError):  # the header, or a line torn mid-write
                continue
        return out

    def last_sample(self) -> Optional[Sample]:
        """The newest sample a running probe has written (the live view), read from the file's end."""
        # A line torn inside its last number still parses: shown, never judged.
        for line in reversed(self._tail(MEMORY, 512) or []):
            sample = Sample.parse(line)
            if sample is not None:
                return sample
        return None

    def substitute(self, request: ProbeRequest, outcome: Outcome, detail: str, log_line: Optional[str],
                   started_at: float, exit_code: Optional[int] = None, extra: Optional[dict] = None) -> ProbeRecord:
        """The record of a probe whose runner could not write one (it never started, or died with its node): the
        executor's own evidence, and the peaks of the timeline it left, if any. Written to ``result.json``."""
        tracker = PeakTracker()
        for sample in self.samples():
            tracker.add(sample)
        record = ProbeRecord(
            batch_size=request.batch_size, phase=request.phase, repeat=request.repeat, retry=request.retry,
            variant=request.variant, attempt=request.attempt, folder=self.name, outcome=outcome,
            evidence=Evidence(exit_code=exit_code, log_line=log_line, detail=detail, **(extra or {})),
            peaks=tracker.peaks, limits=Limits(metric=request.metric, rss_limit_bytes=request.rss_limit_bytes,
                                               cap_bytes=request.cap_bytes, cgroup=None,
                                               cgroup_note="the probe runner wrote no record"),
            started_at=started_at, ended_at=time.time(), argv=mask_argv(request.argv))
        self.write_record(record)
        self.file(RUNNING).unlink(missing_ok=True)
        return record

    def log_tail_line(self, name: str = RUNNER_LOG) -> Optional[str]:
        """The last non-empty line of one of the folder's logs (300 characters at most; its last 64 KiB read)."""
        lines = [line.strip() for line in read_tail(self.file(name), 64 << 10) if line.strip()]
        return lines[-1][:300] if lines else None


def probe_id(spec_name: str, run: str, folder: str) -> str:
    """``HLRP_LADDER_PROBE`` in the tree's environment: resume kills only processes that carry it."""
    return f"{spec_name}/{run}/{folder}/{os.urandom(6).hex()}"

"""The executor interface, in submitit's shape: ``submit(request) -> Handle``; a handle is polled, cancelled, or
found again after the orchestrator died (``reattach``). Every executor runs the same node-side probe runner
(``python -m hlrp_ladder.probe FOLDER``) and so writes the same probe folder; it adds only what it alone knows:
how to start and stop a probe, what it left behind, its own preflight checks, and its own evidence (a SLURM
job's state) merged into the record.

A probe folder, as an executor leaves it::

    request.json    what to run (written by submit; secrets masked)
    submitted.json  how to find it again: the executor, a pid or a job id (written by submit)
    runner.json     who runs it, where (written by the node-side runner)
    ...             the runner's files (argv.json, log.txt, memory.csv, metrics.jsonl, running.json, status.json)
    result.json     the record, written last (by the runner; by the executor only when the runner could not)
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional, Protocol

from pydantic import ValidationError

from hlrp_ladder.records import Evidence, Limits, Outcome, Peaks, ProbeRecord, ProbeRequest

SUBMITTED = "submitted.json"
OnSample = Callable[[ProbeRequest, "object"], None]
ShouldStop = Callable[[], bool]


class Handle(Protocol):
    """One submitted probe."""
    request: ProbeRequest

    def poll(self) -> Optional[ProbeRecord]:
        """The record once the probe has ended (its executor's evidence merged in), else None. Cheap."""
        ...

    def cancel(self) -> None:
        """Stop it; the record that follows says ``interrupted``."""
        ...

    def state(self) -> str:
        """'pending' (not started yet), 'running' or 'ended' (a record is there or can be made). No side effect."""
        ...

    def describe(self) -> str:
        """Where it runs, for a person: 'pid 1234', 'job 17 (RUNNING on node3)'."""
        ...


class Executor(Protocol):
    name: str

    def submit(self, request: ProbeRequest, detached: bool = False) -> Handle:
        """Start a probe (``detached``: the long run, which outlives the orchestrator)."""
        ...

    def reattach(self, folder: Path) -> Optional[Handle]:
        """A handle to a probe submitted by an orchestrator that is gone, if it still runs or ended without
        being collected; None if it is gone for good."""
        ...

    def cleanup(self, folder: Path) -> int:
        """Kill whatever an unfinished probe left behind; how many processes (or jobs) it hit."""
        ...

    def prepare(self, request: ProbeRequest) -> ProbeRequest:
        """The request as this executor runs it (where its cgroup comes from, say)."""
        ...


def wait(handle: Handle, should_stop: Optional[ShouldStop] = None, poll_s: float = 0.1) -> ProbeRecord:
    """Block until the probe ends (cancelling it if ``should_stop`` says so); its record."""
    cancelled = False
    while True:
        rec = handle.poll()
        if rec is not None:
            return rec
        if should_stop is not None and should_stop() and not cancelled:
            handle.cancel()
            cancelled = True
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------------------------- helpers
def open_folder(request: ProbeRequest) -> None:
    """What every submit does first: the probe folder, used once, with its request.json."""
    from hlrp_ladder.probe.node import write_request

    request.folder.mkdir(parents=True, exist_ok=True)
    if (request.folder / "result.json").exists():
        raise FileExistsError(f"{request.folder / 'result.json'} exists: a probe folder is used once")
    write_request(request.folder, request)


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_record(folder: Path) -> Optional[ProbeRecord]:
    try:
        return ProbeRecord.model_validate_json((folder / "result.json").read_text())
    except (OSError, ValueError, ValidationError):
        return None


def last_sample(folder: Path):
    """The newest memory sample a running probe has written (the live view), or None."""
    from hlrp_ladder.probe.sampler import Sample

    try:
        with open(folder / "memory.csv", "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 512))
            lines = handle.read().decode("ascii", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines[1:] if size <= 512 else lines):
        parts = line.split(",")
        # 7 columns; 6 from a runner older than the working set (a probe reattached across an upgrade). A line
        # torn inside its last number still parses: it is shown, never judged.
        if len(parts) in (6, 7) and parts[0] and parts[0] != "t":
            try:
                num = lambda x: int(x) if x else None  # noqa: E731
                return Sample(float(parts[0]), int(parts[1]), num(parts[2]), int(parts[3]), num(parts[4]),
                              num(parts[5]), num(parts[6]) if len(parts) == 7 else None)
            except ValueError:
                continue
    return None


def substitute_record(request: ProbeRequest, outcome: Outcome, detail: str, log_line: Optional[str],
                      started_at: float, exit_code: Optional[int] = None, extra: Optional[dict] = None) -> ProbeRecord:
    """The record of a probe whose runner could not write one (it never started, or died with its node): the
    executor's own evidence, and the peak of the timeline it left, if any. Written to ``result.json``."""
    from hlrp_ladder.masking import mask_argv
    from hlrp_ladder.files import write_json

    peaks = Peaks()
    try:
        rows = [r.split(",") for r in (request.folder / "memory.csv").read_text().splitlines()[1:]]
        num = lambda x: int(x) if x else None  # noqa: E731
        values = [(int(r[1]), num(r[4]), num(r[6]) if len(r) == 7 else None) for r in rows if len(r) in (6, 7) and r[1]]
        if values:
            peaks.sampled_rss_bytes = max(v[0] for v in values)
            charged = [v[1] for v in values if v[1] is not None]
            peaks.cgroup_sampled_bytes = max(charged) if charged else None
            working = [v[2] for v in values if v[2] is not None]
            peaks.working_set_sampled_bytes = max(working) if working else None
            peaks.samples = len(values)
    except (OSError, ValueError, IndexError):
        pass
    record = ProbeRecord(
        batch_size=request.batch_size, phase=request.phase, repeat=request.repeat, retry=request.retry,
        variant=request.variant, attempt=request.attempt, folder=request.folder.name, outcome=outcome,
        evidence=Evidence(exit_code=exit_code, log_line=log_line, detail=detail, **(extra or {})), peaks=peaks,
        limits=Limits(metric=request.metric, rss_limit_bytes=request.rss_limit_bytes, cap_bytes=request.cap_bytes,
                      cgroup=None, cgroup_note="the probe runner wrote no record"),
        started_at=started_at, ended_at=time.time(), argv=mask_argv(request.argv))
    write_json(request.folder / "result.json", record.model_dump(mode="json"))
    (request.folder / "running.json").unlink(missing_ok=True)
    return record

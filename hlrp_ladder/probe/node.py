"""The node side of every executor: ``python -m hlrp_ladder.probe FOLDER`` runs the probe that
``FOLDER/request.json`` describes, wherever it is started — a local subprocess, a SLURM batch job, the detached
long run — and writes the same probe folder (see ``folder``).

SIGINT, SIGTERM and SIGHUP stop it the way the request says (at once for a probe; SIGTERM and a grace for the
long run), recorded as ``interrupted``. It imports only what one probe needs (no policy, no executors, no
reports): it starts once per probe, and its start-up is part of every probe's overhead.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import psutil
from pydantic import ValidationError

from hlrp_ladder.probe.folder import LOG, REQUEST, RUNNER, RUNNER_LOG, STATUS, PeakTracker, ProbeFolder, Sample
from hlrp_ladder.probe.runner import run_probe
from hlrp_ladder.records import ProbeRequest
from hlrp_ladder.util.files import DiskFull, write_json
from hlrp_ladder.util.signals import StopFlag

EXIT_NO_SPACE = 75   # EX_TEMPFAIL: the disk was full; the same probe can run again once there is room


def _load_env(folder: ProbeFolder) -> None:
    """A detached start's environment (the launcher's, as the probes had it), from the owner-only env file."""
    env = folder.take_env()
    if env is None:
        return
    keep = {k: v for k, v in os.environ.items() if k.startswith(("TMUX", "SLURM"))}  # where it really runs
    os.environ.clear()
    os.environ.update({**env, **keep})


def _tmux_session() -> Optional[str]:
    if not os.environ.get("TMUX"):
        return None
    try:
        return subprocess.run(["tmux", "display-message", "-p", "#S"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


class Heartbeat:
    """status.json every ``every`` seconds: memory now and at peak, so ``status`` and a remote orchestrator see
    a running probe without reading its whole timeline."""

    def __init__(self, folder: Path, every: float) -> None:
        self.path, self.every = folder / STATUS, every
        self.tracker = PeakTracker()
        self.last = float("-inf")

    def __call__(self, request: ProbeRequest, sample: Sample) -> None:
        self.tracker.add(sample)
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        peaks = self.tracker.peaks
        write_json(self.path, {"time": time.time(), "t": round(sample.t, 1), "rss": sample.rss,
                               "cgroup": sample.cgroup, "peak_rss": peaks.sampled_rss_bytes,
                               "peak_cgroup": peaks.cgroup_sampled_bytes, "n_procs": sample.n_procs,
                               "working_set": sample.working_set,
                               "peak_working_set": peaks.working_set_sampled_bytes})


def _wait_for_folder() -> Optional[str]:
    """A spare runner (``--stdin``): started ahead of time by the local executor so that its start-up (the
    interpreter and these imports, ~0.1 s) is not paid between two probes. It waits for its probe folder and its
    whole environment on stdin (a pipe only it reads: never on disk or a command line), then writes its output to
    that folder's runner.log like any runner. None: told to go (stdin closed)."""
    line = sys.stdin.readline().strip()
    if not line:
        return None
    env = json.loads(sys.stdin.readline())
    os.environ.clear()
    os.environ.update(env)
    log = os.open(Path(line) / RUNNER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    return line


def main(argv: list[str]) -> int:
    if argv == ["--stdin"]:
        found = _wait_for_folder()
        if found is None:
            return 0
        argv = [found]
    if len(argv) != 1:
        print("usage: python -m hlrp_ladder.probe FOLDER   (FOLDER/request.json describes the probe)\n"
              "       python -m hlrp_ladder.probe --stdin   (the folder comes on stdin: a spare runner)",
              file=sys.stderr)
        return 2
    folder = ProbeFolder(Path(argv[0]).resolve())
    _load_env(folder)
    try:
        request = folder.request()
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"hlrp-ladder probe: {folder.file(REQUEST)}: cannot read the request ({first})", file=sys.stderr)
        return 2
    me = psutil.Process()
    try:
        write_json(folder.file(RUNNER), {"pid": me.pid, "create_time": me.create_time(), "host": platform.node(),
                                         "started_at": time.time(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                                         "tmux_session": _tmux_session(), "python": sys.executable})
        print(f"hlrp-ladder probe runner {me.pid} on {platform.node()}: bs={request.batch_size} {request.phase}, "
              f"log {folder.file(LOG)}", flush=True)
        with StopFlag((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as stop:
            rec = run_probe(request, Heartbeat(folder.path, request.heartbeat_s), stop)
    except DiskFull as exc:  # the probe's tree is already stopped; its executor records what it can
        print(f"hlrp-ladder probe: {exc}; the probe was stopped", file=sys.stderr, flush=True)
        return EXIT_NO_SPACE
    print(f"ended: bs={rec.batch_size} {rec.phase} {rec.outcome.value} — {rec.evidence.detail}", flush=True)
    return 0

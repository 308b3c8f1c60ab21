"""The node side of every executor: ``python -m hlrp_ladder.probe FOLDER`` runs the probe that
``FOLDER/request.json`` describes, wherever it is started — a local subprocess, a SLURM batch job, the detached
long run — and writes the same probe folder:

    request.json (read)  runner.json (who runs it, where)  status.json (a heartbeat)  and the runner's files

SIGINT, SIGTERM and SIGHUP stop it the way the request says (at once for a probe; SIGTERM and a grace for the
long run), recorded as ``interrupted``.
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

from hlrp_ladder.probe.runner import run_probe
from hlrp_ladder.records import ProbeRequest
from hlrp_ladder.signals import StopFlag
from hlrp_ladder.files import atomic_write, write_json

REQUEST, RUNNER, STATUS, ENV_FILE = "request.json", "runner.json", "status.json", ".env.json"


def write_request(folder: Path, request: ProbeRequest) -> None:
    """request.json, with the environment's secrets masked (the real values reach the runner through its own
    environment, or ENV_FILE for a detached start)."""
    from hlrp_ladder.masking import mask

    data = request.model_dump(mode="json")
    data["env"] = mask(data["env"])
    write_json(folder / REQUEST, data)


def read_request(folder: Path) -> ProbeRequest:
    return ProbeRequest.model_validate_json((folder / REQUEST).read_text())


def write_env_file(folder: Path, env: dict[str, str]) -> Path:
    """The environment for a detached runner through a file only the owner can read: on a command line
    (``tmux new-session -e K=V``) every user of the machine could read a secret in /proc/*/cmdline."""
    path = folder / ENV_FILE
    atomic_write(path, json.dumps(env), private=True)
    return path


def _load_env_file(folder: Path) -> None:
    path = folder / ENV_FILE
    try:
        env = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    path.unlink(missing_ok=True)
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
        self.folder, self.every = folder, every
        self.peak_rss = self.peak_cgroup = self.peak_working_set = 0
        self.last = float("-inf")

    def __call__(self, request, sample) -> None:
        self.peak_rss = max(self.peak_rss, sample.rss)
        self.peak_cgroup = max(self.peak_cgroup, sample.cgroup or 0)
        self.peak_working_set = max(self.peak_working_set, sample.working_set or 0)
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        write_json(self.folder / STATUS, {"time": time.time(), "t": round(sample.t, 1), "rss": sample.rss,
                                          "cgroup": sample.cgroup, "peak_rss": self.peak_rss,
                                          "peak_cgroup": self.peak_cgroup or None, "n_procs": sample.n_procs,
                                          "working_set": sample.working_set,
                                          "peak_working_set": self.peak_working_set or None})


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hlrp_ladder.probe FOLDER   (FOLDER/request.json describes the probe)", file=sys.stderr)
        return 2
    folder = Path(argv[0]).resolve()
    _load_env_file(folder)
    try:
        request = read_request(folder)
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"hlrp-ladder probe: {folder / REQUEST}: cannot read the request ({first})", file=sys.stderr)
        return 2
    me = psutil.Process()
    write_json(folder / RUNNER, {"pid": me.pid, "create_time": me.create_time(), "host": platform.node(),
                                 "started_at": time.time(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                                 "tmux_session": _tmux_session(), "python": sys.executable})
    print(f"hlrp-ladder probe runner {me.pid} on {platform.node()}: bs={request.batch_size} {request.phase}, "
          f"log {folder / 'log.txt'}", flush=True)
    with StopFlag((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as stop:
        rec = run_probe(request, Heartbeat(folder, request.heartbeat_s), stop)
    from hlrp_ladder.policy import describe

    print(f"ended: {describe(rec)} — {rec.evidence.detail}", flush=True)
    return 0

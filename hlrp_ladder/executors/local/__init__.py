"""The local executor: the node-side runner runs here, as a child process in a session of its own.

It mirrors cluster semantics: like a job, a probe gets a memory cgroup with a limit the kernel enforces, an
exact peak from the kernel's accounting, and is killed whole. Unlike a job, an attached probe dies with the
orchestrator (``PR_SET_PDEATHSIG``): nothing runs unwatched on a workstation; ``--resume`` cleans up after it.
The long run is submitted detached: in a tmux session when tmux is installed (attach to watch), else in a
session of its own with a log file; it outlives the terminal.
"""
from __future__ import annotations

import ctypes
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import psutil

from hlrp_ladder.executors.core import SUBMITTED, open_folder, read_json, read_record, substitute_record
from hlrp_ladder.probe.node import RUNNER, read_request, write_env_file
from hlrp_ladder.records import Outcome, ProbeRecord, ProbeRequest
from hlrp_ladder.store import RESULT, kill_leftovers, write_json

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
START_WAIT_S = 30.0      # a detached runner that has not said where it runs by then never started


def _die_with(parent_pid: int):
    def setup() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the orchestrator died before prctl took effect
            os._exit(137)
    return setup


def alive(info: Optional[dict]) -> bool:
    """Whether the process a record names (pid *and* start time) still runs here."""
    if not info or not info.get("pid") or info.get("host", platform.node()) != platform.node():
        return False
    try:
        proc = psutil.Process(info["pid"])
        return abs(proc.create_time() - float(info["create_time"])) < 1 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


class LocalHandle:
    def __init__(self, request: ProbeRequest, proc: Optional[subprocess.Popen], submitted_at: float):
        self.request, self.proc, self.submitted_at = request, proc, submitted_at
        self.cancelled_at: Optional[float] = None

    @property
    def folder(self) -> Path:
        return self.request.folder

    def _runner(self) -> Optional[dict]:
        return read_json(self.folder / RUNNER)

    def _running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        info = self._runner()
        if info is None:  # a detached runner that has not started yet
            return time.time() - self.submitted_at < START_WAIT_S and not (self.folder / RESULT).exists()
        return alive(info)

    def poll(self) -> Optional[ProbeRecord]:
        if self._running():
            if self.cancelled_at is not None and time.monotonic() - self.cancelled_at > self.request.stop_grace_s + 15:
                self._kill_runner()  # it did not stop as asked: its tree dies with it, cleanup takes the rest
            return None
        rec = read_record(self.folder)
        if rec is not None:
            return rec
        cleanup(self.folder)
        code = self.proc.returncode if self.proc is not None else None
        tail = _tail(self.folder / "runner.log")
        if self.cancelled_at is not None:
            return substitute_record(self.request, Outcome.interrupted, "stopped by the user; the probe runner was "
                                     "killed before it wrote a record", tail, self.submitted_at, code)
        return substitute_record(self.request, Outcome.error, f"the probe runner ended ({code}) and left no "
                                 f"record; see {self.folder / 'runner.log'}", tail, self.submitted_at, code)

    def state(self) -> str:
        return "running" if self._running() else "ended"

    def cancel(self) -> None:
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
            self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        pid = self.proc.pid if self.proc is not None else (self._runner() or {}).get("pid")
        if pid and (self.proc is not None or alive(self._runner())):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _kill_runner(self) -> None:
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def describe(self) -> str:
        info = self._runner() or {}
        tmux = f", tmux {info['tmux_session']}" if info.get("tmux_session") else ""
        return f"pid {info.get('pid') or (self.proc.pid if self.proc else '?')}{tmux}"


def _tail(path: Path) -> Optional[str]:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def cleanup(folder: Path) -> int:
    """Kill what an unfinished local probe left: its runner (same pid and start time) and what its tree left
    (the probe's marker, its cgroup)."""
    hit = 0
    for name in (RUNNER, SUBMITTED):
        info = read_json(folder / name)
        if alive(info):
            try:
                os.kill(info["pid"], signal.SIGKILL)
                hit += 1
            except ProcessLookupError:
                pass
    return hit + kill_leftovers(folder / "running.json")


class LocalExecutor:
    """Runs each probe's node-side runner as a local subprocess. ``cgroup`` is where its memory cgroups go
    (resolved once per run by the orchestrator; "auto" finds one)."""
    name = "local"

    def __init__(self, cgroup: str = "auto", cgroup_note: str = ""):
        self.cgroup, self.cgroup_note = cgroup, cgroup_note

    def configure(self, facts: dict) -> None:
        """Use the probe-cgroup parent a run resolved (``host.facts``): its probes all go there, or get none."""
        self.cgroup = facts.get("cgroup_parent") or "none"
        self.cgroup_note = "" if facts.get("cgroup_parent") else f"no writable memory cgroup ({facts.get('cgroup_note')})"

    def prepare(self, request: ProbeRequest) -> ProbeRequest:
        if request.cgroup != "auto":
            return request
        return request.model_copy(update={"cgroup": self.cgroup, "cgroup_note": self.cgroup_note})

    def submit(self, request: ProbeRequest, detached: bool = False, name: Optional[str] = None) -> LocalHandle:
        """Start the runner on ``request.folder``. ``detached`` (the long run): in tmux session ``name`` when
        tmux is installed, else in a session of its own; it outlives the orchestrator."""
        request = self.prepare(request)
        folder = request.folder
        open_folder(request)
        argv = [sys.executable, "-m", "hlrp_ladder.probe", str(folder)]
        submitted_at = time.time()
        info: dict = {"executor": self.name, "host": platform.node(), "submitted_at": submitted_at,
                      "detached": detached}
        proc = None
        if not detached:
            with open(folder / "runner.log", "ab") as log:
                proc = subprocess.Popen(argv, env={**os.environ, **request.env}, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, cwd=request.cwd,
                                        start_new_session=True, close_fds=True, preexec_fn=_die_with(os.getpid()))
            info.update(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time())
        else:
            # The launcher's environment, as the probes had it (a tmux server started earlier would otherwise
            # give the long run its own), through an owner-only file: never on a command line.
            write_env_file(folder, {**{k: v for k, v in os.environ.items() if not k.startswith("TMUX")},
                                    **request.env})
            if name and shutil.which("tmux"):
                # several command arguments: tmux executes the runner directly, without sh -c
                subprocess.run(["tmux", "new-session", "-d", "-s", name, "-c", request.cwd, "--", *argv],
                               check=True, capture_output=True)
                info["tmux_session"] = name
            else:
                with open(folder / "runner.log", "ab") as log:
                    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=request.cwd, start_new_session=True, close_fds=True)
        write_json(folder / SUBMITTED, info)
        return LocalHandle(request, proc, submitted_at)

    def reattach(self, folder: Path) -> Optional[LocalHandle]:
        submitted = read_json(folder / SUBMITTED)
        if not submitted or not (alive(read_json(folder / RUNNER)) or (folder / RESULT).exists()):
            return None
        try:
            request = read_request(folder)
        except (OSError, ValueError):
            return None
        return LocalHandle(request, None, float(submitted.get("submitted_at", time.time())))

    def cleanup(self, folder: Path) -> int:
        return cleanup(folder)

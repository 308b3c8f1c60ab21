"""The local executor: the node-side runner runs here, as a child process in a session of its own.

It mirrors cluster semantics: like a job, a probe gets a memory cgroup with a limit the kernel enforces, an
exact peak from the kernel's accounting, and is killed whole. Unlike a job, an attached probe dies with the
orchestrator (``PR_SET_PDEATHSIG``): nothing runs unwatched on a workstation; ``--resume`` cleans up after it.
The long run is submitted detached: in a tmux session when tmux is installed (attach to watch), else in a
session of its own with a log file; it outlives the terminal.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import psutil

from hlrp_ladder.probe import cgroup as cgroups
from hlrp_ladder.probe import host
from hlrp_ladder.probe import gpu as gpus
from hlrp_ladder.probe.folder import LOG, RESULT, RUNNER, RUNNER_LOG, RUNNING, SUBMITTED, ProbeFolder, read_json
from hlrp_ladder.probe.process import die_with, kill_leftovers
from hlrp_ladder.records import Outcome, ProbeRecord, ProbeRequest
from hlrp_ladder.spec.sections import ExecutorSpec
from hlrp_ladder.util.files import write_json

START_WAIT_S = 30.0      # a detached runner that has not said where it runs by then never started


def runner_alive(info: Optional[dict]) -> bool:
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
        self._pidfd: Optional[int] = None

    def waitable(self) -> Optional[int]:
        """A file descriptor that becomes readable when the runner exits (a pidfd), so the orchestrator wakes at
        once instead of at its next poll; None where there is none (a re-attached runner, an old kernel)."""
        if self._pidfd is None and self.proc is not None and self.proc.returncode is None:
            try:
                self._pidfd = os.pidfd_open(self.proc.pid)
            except (OSError, AttributeError):
                return None
        return self._pidfd

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def __del__(self) -> None:  # a handle dropped without its record (abandoned on a full disk) keeps no fd
        self._close_pidfd()

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
        return runner_alive(info)

    def poll(self) -> Optional[ProbeRecord]:
        if self._running():
            if self.cancelled_at is not None and time.monotonic() - self.cancelled_at > self.request.stop_grace_s + 15:
                self._kill_runner()  # it did not stop as asked: its tree dies with it, cleanup takes the rest
            return None
        self._close_pidfd()
        folder = ProbeFolder(self.folder)
        rec = folder.record()
        if rec is not None:
            return rec
        cleanup(self.folder)
        code = self.proc.returncode if self.proc is not None else None
        tail = folder.log_tail_line(RUNNER_LOG)
        if self.cancelled_at is not None:
            return folder.substitute(self.request, Outcome.interrupted, "stopped by the user; the probe runner was "
                                     "killed before it wrote a record", tail, self.submitted_at, code)
        return folder.substitute(self.request, Outcome.error, f"the probe runner ended ({code}) and left no "
                                 f"record; see {folder.file(RUNNER_LOG)}", tail, self.submitted_at, code)

    def state(self) -> str:
        return "running" if self._running() else "ended"

    def cancel(self) -> None:
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
            self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        pid = self.proc.pid if self.proc is not None else (self._runner() or {}).get("pid")
        if pid and (self.proc is not None or runner_alive(self._runner())):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _kill_runner(self) -> None:
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def where(self) -> str:
        info = self._runner() or {}
        tmux = f", tmux {info['tmux_session']}" if info.get("tmux_session") else ""
        return f"pid {info.get('pid') or (self.proc.pid if self.proc else '?')}{tmux}"


def cleanup(folder: Path) -> int:
    """Kill what an unfinished local probe left: its runner (same pid and start time) and what its tree left
    (the probe's marker, its cgroup)."""
    hit = 0
    for name in (RUNNER, SUBMITTED):
        info = read_json(folder / name)
        if runner_alive(info):
            try:
                os.kill(info["pid"], signal.SIGKILL)
                hit += 1
            except ProcessLookupError:
                pass
    return hit + kill_leftovers(folder / RUNNING)


class LocalExecutor:
    """Runs each probe's node-side runner as a local subprocess. ``cgroup`` is where its memory cgroups go
    (resolved once per run by the orchestrator; "auto" finds one).

    Inside a ``session()``, once a probe has been submitted, a spare runner is started beside it: a runner that
    has already paid its start-up (the interpreter and its imports, ~0.1 s) and waits on stdin for the next
    probe's folder and environment. Between two probes only that is written then, not a process started: on 5 s
    probes that start-up was half the ladder's overhead (docs/monitor.md)."""
    name = "local"

    def __init__(self, cgroup: str = "auto", cgroup_note: str = ""):
        self.cgroup, self.cgroup_note = cgroup, cgroup_note
        self._spares = False                       # keep a spare runner (inside a session)
        self._spare: Optional[subprocess.Popen] = None

    def _start_spare(self) -> None:
        if self._spares and self._spare is None:
            self._spare = subprocess.Popen(
                [sys.executable, "-m", "hlrp_ladder.probe", "--stdin"], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                preexec_fn=die_with(os.getpid()))

    def _take_spare(self, folder: Path, env: dict[str, str]) -> Optional[subprocess.Popen]:
        """The spare runner, handed ``folder`` and its whole environment over its stdin (a pipe only it reads:
        neither on a command line nor on disk), or None when there is none or it is gone."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        try:
            if spare.poll() is not None:
                raise BrokenPipeError("the spare runner is gone")
            spare.stdin.write(f"{folder}\n{json.dumps(env)}\n".encode())
            spare.stdin.close()
            return spare
        except OSError:  # it died meanwhile: start a fresh runner instead
            spare.kill()
            spare.wait()
            try:
                spare.stdin.close()
            except OSError:
                pass
            return None

    def _stop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:  # it holds nothing yet (no folder, no probe): killed, not waited for to finish importing
            spare.kill()
            spare.wait()
            spare.stdin.close()

    def usable_memory(self) -> int:
        return host.usable_memory()

    def facts(self, cap_bytes: Optional[int]) -> dict:
        return host.facts(cap_bytes)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """cgroup v2, ordinary user: the memory controller enabled for the delegated cgroup's children for the run
        (and put back after), so probes can be capped."""
        leaf = cgroups.delegate()
        self._spares = True
        try:
            yield
        finally:
            self._spares = False
            self._stop_spare()
            cgroups.undelegate(leaf)

    def sweep(self) -> list[str]:
        """Stale probe cgroups of runners that are gone."""
        removed, busy = cgroups.sweep_stale(cgroups.find_parent()[0])
        return [f"removed a stale probe cgroup: {path}" for path in removed] + \
            [f"warning: {path} still holds processes of a probe whose monitor is gone; --resume of its run kills "
             f"them" for path in busy]

    def slot_cores(self, spec: ExecutorSpec) -> Optional[list[list[int]]]:
        """Each slot's cores, disjoint (default: this machine's cores / max_parallel); None for one slot with no
        pinning asked for. A probe competing for CPU fills its prefetch queues differently and measures a
        different peak."""
        if spec.max_parallel == 1 and spec.cpus_per_probe is None:
            return None
        cores = sorted(os.sched_getaffinity(0))
        each = spec.cpus_per_probe or max(1, len(cores) // spec.max_parallel)
        return [cores[i * each:(i + 1) * each] for i in range(spec.max_parallel)]

    def slot_gpus(self, spec: ExecutorSpec) -> Optional[list[list[int]]]:
        """Each slot's own GPUs (``gpus_per_probe`` of the visible ones, through CUDA_VISIBLE_DEVICES): two probes
        on one GPU take each other's memory. None where there are none to hand out (preflight refuses more slots
        than the GPUs can serve)."""
        visible = gpus.local_indices()
        return gpus.slot_devices(visible, spec.max_parallel, gpus.per_probe(spec.gpus_per_probe, len(visible)))

    def launch_words(self, name: str, folder: Path) -> tuple[str, str]:
        if shutil.which("tmux"):
            return f"starts in tmux session {name!r} (tmux attach -t {name})", f"tmux attach -t {name}"
        return (f"tmux not installed: starts as a detached session, runner output in {folder / RUNNER_LOG}",
                f"tail -f {folder / LOG}")

    def configure(self, facts: dict) -> None:
        """Use the probe-cgroup parent a run resolved (``host.facts``): its probes all go there, or get none."""
        self.cgroup = facts.get("cgroup_parent") or "none"
        self.cgroup_note = "" if facts.get("cgroup_parent") else f"no writable memory cgroup ({facts.get('cgroup_note')})"
        self._start_spare()  # a run is about to submit: its first runner starts up meanwhile

    def prepare(self, request: ProbeRequest) -> ProbeRequest:
        if request.cgroup != "auto":
            return request
        return request.model_copy(update={"cgroup": self.cgroup, "cgroup_note": self.cgroup_note})

    def submit(self, request: ProbeRequest, detached: bool = False, name: Optional[str] = None) -> LocalHandle:
        """Start the runner on ``request.folder``. ``detached`` (the long run): in tmux session ``name`` when
        tmux is installed, else in a session of its own; it outlives the orchestrator."""
        if detached and name and shutil.which("tmux") and \
                subprocess.run(["tmux", "has-session", "-t", f"={name}"], capture_output=True).returncode == 0:
            raise FileExistsError(f"tmux session {name!r} exists already")  # before anything is written
        request = self.prepare(request)
        folder = request.folder
        ProbeFolder(folder).open(request)
        argv = [sys.executable, "-m", "hlrp_ladder.probe", str(folder)]
        submitted_at = time.time()
        info: dict = {"executor": self.name, "host": platform.node(), "submitted_at": submitted_at,
                      "detached": detached}
        proc = None
        if not detached:
            # Attached: nothing runs unwatched on a workstation; the runner dies with the orchestrator.
            proc = self._take_spare(folder, {**os.environ, **request.env}) if request.cwd == os.getcwd() else None
            if proc is None:
                with open(folder / RUNNER_LOG, "ab") as log:
                    proc = subprocess.Popen(argv, env={**os.environ, **request.env}, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, cwd=request.cwd,
                                            start_new_session=True, close_fds=True, preexec_fn=die_with(os.getpid()))
            info.update(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
                        spare=proc.args[-1] == "--stdin")
            self._start_spare()  # the next probe's runner starts up while this one runs
        else:
            # The launcher's environment, as the probes had it (a tmux server started earlier would otherwise
            # give the long run its own), through an owner-only file: never on a command line.
            ProbeFolder(folder).write_env({**{k: v for k, v in os.environ.items() if not k.startswith("TMUX")},
                                           **request.env})
            if name and shutil.which("tmux"):
                # several command arguments: tmux executes the runner directly, without sh -c
                subprocess.run(["tmux", "new-session", "-d", "-s", name, "-c", request.cwd, "--", *argv],
                               check=True, capture_output=True)
                info["tmux_session"] = name
            else:
                with open(folder / RUNNER_LOG, "ab") as log:
                    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=request.cwd, start_new_session=True, close_fds=True)
        write_json(folder / SUBMITTED, info)
        return LocalHandle(request, proc, submitted_at)

    def reattach(self, folder: Path) -> Optional[LocalHandle]:
        submitted = read_json(folder / SUBMITTED)
        if not submitted or not (runner_alive(read_json(folder / RUNNER)) or (folder / RESULT).exists()):
            return None
        try:
            request = ProbeFolder(folder).request()
        except (OSError, ValueError):
            return None
        return LocalHandle(request, None, float(submitted.get("submitted_at", time.time())))

    def settle(self, folders: list[Path]) -> list[str]:
        return []  # the runner's record is the whole record here

    def calls(self) -> dict[str, int]:
        return {}  # no scheduler to lean on

    def cancel_all(self, handles: list) -> None:
        for handle in handles:
            handle.cancel()

    def cleanup(self, folder: Path) -> int:
        return cleanup(folder)

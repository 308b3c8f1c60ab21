"""Starting a probe in its own session (and cgroup), killing its whole tree, and finding what a probe that lost
its monitor left running."""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable, Iterable, Optional

import psutil

from hlrp_ladder.probe import cgroup as cgroups
from hlrp_ladder.probe.cgroup import MemoryCgroup
from hlrp_ladder.probe.folder import read_json
from hlrp_ladder.records import MARKER_ENV

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # resolved before any fork: nothing to look up in the child


def die_with(parent_pid: int) -> Callable[[], None]:
    """For a child between fork and exec: if ``parent_pid`` (the process that forks it) dies, even by SIGKILL,
    the kernel kills the child too. A parent that died before ``prctl`` took effect is caught by the pid check."""
    def setup() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(137)
    return setup


def _child_setup(procs_file: Optional[bytes], parent_pid: int, cpus: Optional[list[int]] = None) -> Callable[[], None]:
    """Runs in the child between fork and exec: join the cgroup, take its slot's cores, die with the runner."""
    def setup() -> None:
        if cpus:
            # a probe competing for CPU fills its prefetch queues differently and measures a different peak
            os.sched_setaffinity(0, cpus)
        if procs_file is not None:
            fd = os.open(procs_file, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0" = the writing process itself
            finally:
                os.close(fd)
        die_with(parent_pid)()  # a runner killed outright (even with SIGKILL) takes the probe with it
    return setup


def spawn(argv: list[str], env: dict[str, str], cwd: str, log_path: Path,
          cgroup: Optional[MemoryCgroup], cpus: Optional[list[int]] = None) -> subprocess.Popen:
    """Start ``argv`` (never through a shell) in a new session, stdout+stderr into ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env,
            start_new_session=True, close_fds=True,
            preexec_fn=_child_setup(str(cgroup.procs_file).encode() if cgroup else None, os.getpid(), cpus))


def signal_tree(pgid: int, known: Iterable[psutil.Process], cgroup: Optional[MemoryCgroup],
                sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group, every process seen in the tree, and every cgroup member."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in known:
        try:
            proc.send_signal(sig)  # psutil checks the pid still names the same process
        except psutil.Error:
            pass
    if cgroup is not None and sig == signal.SIGKILL:
        cgroup.kill_all()
    elif cgroup is not None:
        for pid in cgroup.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def still_running(known: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``known`` that still run (zombies are dead)."""
    out = []
    for proc in known:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            pass
    return out


def kill_leftovers(running_file: Path) -> int:
    """Kill what a probe recorded in ``running.json`` and still runs: only what is surely its own — the main
    process (same pid *and* start time), processes whose environment carries the probe's marker, and members
    of its cgroup. A process group id alone proves nothing (days later it may be another user's)."""
    info = read_json(running_file)
    if info is None:
        return 0
    marker, targets = info.get("marker"), []
    for proc in psutil.process_iter(["pid", "create_time"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.pid == info.get("pid") and abs(proc.info["create_time"] - float(info.get("create_time") or 0)) < 1:
                targets.append(proc)
            elif marker and proc.environ().get(MARKER_ENV) == marker:
                targets.append(proc)
        except (psutil.Error, OSError):  # gone, or another user's (whose environment we may not read)
            continue
    cg = cgroups.find(info.get("cgroup") or "")
    hit = {proc.pid for proc in targets} | set(cg.pids() if cg is not None else [])
    for proc in targets:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    if cg is not None:
        cg.kill_all()
        cg.remove()
    pipe = info.get("mps_pipe")
    if isinstance(pipe, str) and os.path.basename(pipe).startswith("hlrp-mps-"):
        shutil.rmtree(pipe, ignore_errors=True)  # the MPS daemon carried the marker: killed above
    return len(hit)

"""Starting a probe in its own session (and cgroup), and killing its whole tree."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterable, Optional

import psutil

from hlrp_ladder.probe.cgroup import MemoryCgroup

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # resolved before any fork: nothing to look up in the child


def _child_setup(procs_file: Optional[bytes], parent_pid: int, cpus: Optional[list[int]] = None):
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
        # If the orchestrator is killed (even with SIGKILL), the kernel kills the probe with it.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the orchestrator died before prctl took effect
            os._exit(137)
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


def alive(known: Iterable[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in known:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            pass
    return out

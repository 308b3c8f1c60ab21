"""A memory cgroup per probe (v1 or v2, whichever is writable), for an exact peak, a real kernel cap and a
complete member list. Where neither is writable, :func:`create` returns None and says why.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil

PARENT = "hlrp-ladder"


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _counter(text: str, name: str) -> Optional[int]:
    match = re.search(rf"^{name} (\d+)$", text, re.M)
    return int(match.group(1)) if match else None


def vmstat_oom_kills() -> Optional[int]:
    """The system-wide count of kernel OOM kills (Linux >= 4.13)."""
    try:
        return _counter(_read(Path("/proc/vmstat")), "oom_kill")
    except OSError:
        return None


def mounts() -> tuple[Optional[Path], Optional[Path]]:
    """(cgroup v1 memory mount, cgroup v2 mount)."""
    v1 = v2 = None
    for part in psutil.disk_partitions(all=True):
        if part.fstype == "cgroup" and "memory" in part.opts.split(","):
            v1 = v1 or Path(part.mountpoint)
        elif part.fstype == "cgroup2":
            v2 = v2 or Path(part.mountpoint)
    return v1, v2


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:200]


@dataclass
class MemoryCgroup:
    version: int
    path: Path

    def __str__(self) -> str:
        return f"v{self.version} {self.path}"

    # ---- files that differ between v1 and v2 ---------------------------------------------------------------
    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    @property
    def usage_file(self) -> Path:
        return self.path / ("memory.usage_in_bytes" if self.version == 1 else "memory.current")

    def usage(self) -> Optional[int]:
        try:
            return int(_read(self.usage_file))
        except (OSError, ValueError):
            return None

    def peak(self) -> tuple[Optional[int], str]:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int(_read(self.path / name)), f"cgroup v{self.version} {name}"
        except (OSError, ValueError):
            return None, ""

    def oom_kills(self) -> Optional[int]:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            return _counter(_read(self.path / name), "oom_kill")
        except OSError:
            return None

    @property
    def oom_counter_name(self) -> str:
        return f"cgroup v{self.version} " + ("memory.oom_control" if self.version == 1 else "memory.events")

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in _read(self.procs_file).split()]
        except (OSError, ValueError):
            return []

    def kill_all(self) -> int:
        """SIGKILL every member until none is left (members may fork meanwhile); return how many were hit."""
        hit = 0
        if self.version == 2 and (self.path / "cgroup.kill").exists():
            pids = self.pids()
            try:
                _write(self.path / "cgroup.kill", "1")
                return len(pids)
            except OSError:
                pass
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    hit += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        return hit

    def remove(self, wait_s: float = 5.0) -> None:
        """rmdir once the members are gone (the kernel refuses while any remain), and the shared parent folder
        too when this was its last probe."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    return
                self.kill_all()
                time.sleep(0.05)
        if self.path.parent.name == PARENT:
            try:
                self.path.parent.rmdir()
            except OSError:  # another probe is using it
                pass


def _create_v1(mount: Path, name: str, limit: Optional[int]) -> MemoryCgroup:
    path = mount / PARENT / name
    path.mkdir(parents=True, exist_ok=False)
    cg = MemoryCgroup(1, path)
    try:
        if limit is not None:
            _write(path / "memory.limit_in_bytes", str(limit))
            if (path / "memory.memsw.limit_in_bytes").exists():
                try:  # no swapping around the cap, where swap accounting exists
                    _write(path / "memory.memsw.limit_in_bytes", str(limit))
                except OSError:
                    pass
    except OSError:
        cg.remove()
        raise
    return cg


def _create_v2(mount: Path, name: str, limit: Optional[int]) -> MemoryCgroup:
    if "memory" not in _read(mount / "cgroup.controllers").split():
        raise OSError(errno.ENOTSUP, "the memory controller is not enabled in the v2 hierarchy")
    if "memory" not in _read(mount / "cgroup.subtree_control").split():
        _write(mount / "cgroup.subtree_control", "+memory")
    parent = mount / PARENT
    parent.mkdir(exist_ok=True)
    if "memory" not in _read(parent / "cgroup.subtree_control").split():
        _write(parent / "cgroup.subtree_control", "+memory")
    path = parent / name
    path.mkdir(exist_ok=False)
    cg = MemoryCgroup(2, path)
    try:
        if limit is not None:
            _write(path / "memory.max", str(limit))
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")
    except OSError:
        cg.remove()
        raise
    return cg


def create(name: str, limit: Optional[int]) -> tuple[Optional[MemoryCgroup], str]:
    """A fresh memory cgroup for one probe, or (None, why not). The name ends in ``.p<pid>`` of the creating
    process, so a later sweep can tell a cgroup whose creator is gone."""
    v1, v2 = mounts()
    name = f"{safe_name(name)[:180]}.p{os.getpid()}"
    reasons = []
    for version, mount, make in ((1, v1, _create_v1), (2, v2, _create_v2)):
        if mount is None:
            reasons.append(f"v{version}: not mounted")
            continue
        stale = mount / PARENT / name
        if stale.exists():
            MemoryCgroup(version, stale).kill_all()
            MemoryCgroup(version, stale).remove()
        for _ in range(3):  # the shared parent folder may vanish under us (its last probe removing it)
            try:
                return make(mount, name, limit), ""
            except FileNotFoundError:
                continue
            except OSError as exc:
                reasons.append(f"v{version}: {exc.strerror or exc}")
                break
    return None, "no writable memory cgroup (" + "; ".join(reasons) + ")"


def _creator_alive(folder: Path) -> bool:
    match = re.search(r"\.p(\d+)$", folder.name)
    if not match:
        return True  # not named by us: leave it alone
    try:
        # the pid must belong to a process at least as old as the folder (a reused pid is a later process)
        return psutil.Process(int(match.group(1))).create_time() <= folder.stat().st_ctime + 1
    except (psutil.Error, OSError):
        return False


def sweep_stale() -> tuple[list[str], list[str]]:
    """Remove the empty probe cgroups of monitors that are gone (a crash between create and remove); return
    (removed, still holding processes). A stale cgroup with processes in it is left to ``--resume`` of its
    run, which kills exactly those."""
    removed, busy = [], []
    for version, mount in zip((1, 2), mounts()):
        parent = mount / PARENT if mount is not None else None
        if parent is None or not parent.is_dir():
            continue
        for child in parent.iterdir():
            if not child.is_dir() or _creator_alive(child):
                continue
            try:
                child.rmdir()
                removed.append(f"v{version} {child}")
            except OSError:
                busy.append(f"v{version} {child}")
        try:
            parent.rmdir()
        except OSError:
            pass
    return removed, busy


def find(path: str) -> Optional[MemoryCgroup]:
    """The cgroup recorded as ``v1 /sys/fs/cgroup/...`` in a record, if it still exists."""
    match = re.match(r"^v([12]) (.+)$", path or "")
    if not match or not Path(match.group(2)).is_dir():
        return None
    return MemoryCgroup(int(match.group(1)), Path(match.group(2)))

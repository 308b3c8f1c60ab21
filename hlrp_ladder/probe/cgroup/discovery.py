"""Where probe cgroups can be made, and which cgroup this process sits in.

- as root, under ``<mount>/hlrp-ladder/`` of the v1 memory hierarchy or the v2 one;
- as an ordinary user, inside the user's own cgroup when the system delegated it (writable: systemd user
  delegation, a container's namespace, a subtree root prepared): ``<own cgroup>/hlrp-ladder/`` (on v2 see
  ``delegation``);
- inside a SLURM job, the job's own cgroup (:func:`enclosing`), read without root: SLURM enforces ``--mem``.
Where nothing is writable, the run says "no cap: <why>" and goes on with the soft limit.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil

from hlrp_ladder.probe.cgroup.handle import HOME, PARENT, MemoryCgroup, _read


def mounts() -> tuple[Optional[Path], Optional[Path]]:
    """(cgroup v1 memory mount, cgroup v2 mount)."""
    v1 = v2 = None
    for part in psutil.disk_partitions(all=True):
        if part.fstype == "cgroup" and "memory" in part.opts.split(","):
            v1 = v1 or Path(part.mountpoint)
        elif part.fstype == "cgroup2":
            v2 = v2 or Path(part.mountpoint)
    return v1, v2


def own(version: int, pid: str = "self") -> Optional[Path]:
    """The cgroup folder a process sits in, in the v1 memory hierarchy or the v2 one."""
    v1, v2 = mounts()
    mount = v1 if version == 1 else v2
    if mount is None:
        return None
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (version == 1 and "memory" in controllers.split(",")) or (version == 2 and controllers == ""):
            here = mount / path.lstrip("/")
            # in a container the mount may be the own cgroup itself (a cgroup namespace shows the path as /)
            return here if here.is_dir() else mount
    return None


def own_dirs(version: Optional[int] = None) -> list[Path]:
    """The memory cgroup folders this process sits in and their ancestors up to each mount (v1 memory controller
    and v2, or only ``version``), innermost first."""
    v1, v2 = mounts()
    out: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if v1 is not None and "memory" in controllers.split(",") and version in (None, 1):
            base = v1
        elif v2 is not None and controllers == "" and version in (None, 2):
            base = v2
        else:
            continue
        here = base / path.lstrip("/")
        while True:
            if here.is_dir():
                out.append(here)
            if here == base:
                break
            here = here.parent
    return out


@dataclass(frozen=True)
class Parent:
    """The folder probe cgroups are made in."""
    version: int
    path: Path

    def __str__(self) -> str:
        return f"v{self.version} {self.path}"

    @staticmethod
    def parse(text: Optional[str]) -> Optional["Parent"]:
        match = re.match(r"^v([12]) (.+)$", text or "")
        return Parent(int(match.group(1)), Path(match.group(2))) if match else None


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK) and os.access(folder / "cgroup.procs", os.W_OK)


def find_parent() -> tuple[Optional[Parent], str]:
    """Where this process may make memory-capped probe cgroups, or (None, why not). Nothing is created."""
    v1, v2 = mounts()
    reasons = []
    root = os.geteuid() == 0
    if v1 is not None:
        base = v1 if root else own(1)
        if base is not None and _writable(base):
            return Parent(1, base / PARENT), ""
        reasons.append(f"v1: {base} is not delegated to uid {os.geteuid()}" if base else "v1: no own cgroup")
    else:
        reasons.append("v1: no memory hierarchy mounted")
    if v2 is not None:
        base = v2 if root else own(2)
        if base is not None and base.name.startswith(f"{HOME}.p"):  # moved there by delegate(): its parent
            base = base.parent
        if base is None:
            reasons.append("v2: no own cgroup")
        elif "memory" not in _read(base / "cgroup.controllers").split():
            reasons.append(f"v2: the memory controller is not available in {base}")
        elif not _writable(base):
            reasons.append(f"v2: {base} is not delegated to uid {os.geteuid()}")
        elif not root and "memory" not in _read(base / "cgroup.subtree_control").split():
            reasons.append(f"v2: {base} is delegated, but its memory controller is not enabled for children "
                           f"(hlrp-ladder run does that when it is alone in it)")
        else:
            return Parent(2, base / PARENT), ""
    else:
        reasons.append("v2: not mounted")
    return None, "; ".join(reasons)


def job_of(cg: MemoryCgroup) -> Optional[MemoryCgroup]:
    """The SLURM job's own cgroup (``.../job_N``) above ``cg`` (the step's, where the runner sits): where the tasks
    an ``srun`` inside the job starts sit too, in their own step. None outside a job."""
    here = cg.members or cg.path
    for folder in (here, *here.parents):
        if re.fullmatch(r"job_\d+", folder.name):
            return MemoryCgroup(cg.version, folder, shared=True, members=cg.members or cg.path)
    return None


def enclosing() -> tuple[Optional[MemoryCgroup], str]:
    """The cgroup this process sits in, read without root: inside a SLURM job, the nearest one up that carries
    the job's --mem (SLURM v1 puts a process in ``job_N/step_batch/task_0`` and the limit on ``step_batch``
    and ``job_N``), whose peak and OOM-kill counter (hierarchical) count the whole step. Members are read
    where this process sits (a v1 member list is not recursive)."""
    v1, v2 = mounts()
    for version, mount in ((1, v1), (2, v2)):
        path = own(version)
        if path is None or mount is None:
            continue
        here = path
        while True:
            cg = MemoryCgroup(version, here, shared=True, members=path)
            if cg.limit() is not None or here == mount:
                break
            here = here.parent
        if cg.limit() is None:
            cg = MemoryCgroup(version, path, shared=True)
        if cg.peak()[0] is not None or cg.usage() is not None:
            return cg, ""
    return None, "the enclosing cgroup has no readable memory accounting"

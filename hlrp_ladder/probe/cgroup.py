"""Memory cgroups: one per probe, for an exact peak, a real kernel cap and a complete member list.

Where a probe cgroup can be made (:func:`find_parent`, resolved once per run by the orchestrator):
- as root, under ``<mount>/hlrp-ladder/`` of the v1 memory hierarchy or the v2 one;
- as an ordinary user, inside the user's own cgroup when the system delegated it (it is writable: systemd
  user delegation, a container's namespace, a subtree root prepared): ``<own cgroup>/hlrp-ladder/``. On v2 the
  memory controller must be enabled for the children of the own cgroup, which the kernel allows only while it
  holds no process ("no internal processes"); :func:`delegate` moves this process into a leaf of its own first,
  when it is the only one there, and :func:`undelegate` puts everything back at the end.
- inside a SLURM job, the job's own cgroup (:func:`enclosing`), read without root: SLURM enforces ``--mem``.
The root ``cgroup.subtree_control`` is written only by root. Where nothing is writable, the run says
"no cap: <why>" and goes on with the soft limit.
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
HOME = "hlrp-ladder-home"   # v2 delegation: the leaf the orchestrator moves into


def working_set(usage: int, stat: bytes, key: bytes) -> Optional[int]:
    """Charged memory less the inactive file cache (``memory.stat``'s ``key``): what the kernel cannot take back
    without hurting the job. It is the number Kubernetes evicts on (cAdvisor's working set). ``None`` when the
    key is missing."""
    for line in stat.splitlines():
        name, _, value = line.partition(b" ")
        if name == key:
            return max(0, usage - int(value))
    return None


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


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:200]


@dataclass
class MemoryCgroup:
    version: int
    path: Path
    shared: bool = False    # a cgroup this process sits in (a SLURM job's): read; its members killed, never itself
    members: Optional[Path] = None   # where the member list is read, when not ``path`` (a v1 job: see enclosing)

    def __str__(self) -> str:
        return f"v{self.version} {self.path}"

    # ---- files that differ between v1 and v2 ---------------------------------------------------------------
    @property
    def procs_file(self) -> Path:
        return (self.members or self.path) / "cgroup.procs"

    @property
    def usage_file(self) -> Path:
        return self.path / ("memory.usage_in_bytes" if self.version == 1 else "memory.current")

    @property
    def stat_file(self) -> Path:
        return self.path / "memory.stat"

    @property
    def inactive_file_key(self) -> bytes:
        # v1's hierarchical total (a probe's cgroup has no children, a SLURM job's step does); v2's is hierarchical
        return b"total_inactive_file" if self.version == 1 else b"inactive_file"

    def usage(self) -> Optional[int]:
        try:
            return int(_read(self.usage_file))
        except (OSError, ValueError):
            return None

    def limit(self) -> Optional[int]:
        try:
            text = _read(self.path / ("memory.limit_in_bytes" if self.version == 1 else "memory.max")).strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and int(text) < (1 << 60) else None

    def peak(self) -> tuple[Optional[int], str]:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int(_read(self.path / name)), f"cgroup v{self.version} {name}"
        except (OSError, ValueError):
            return None, ""

    def oom_kills(self) -> Optional[int]:
        """Kernel OOM kills of this cgroup's processes. A v1 counter counts only the cgroup the victim sat in
        (measured in a SLURM job: ``task_0`` says 1, its capped ``step_batch`` 0), so where the members live
        elsewhere both are read."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        counts = []
        for folder in {self.path, self.members or self.path}:
            try:
                counts.append(_counter(_read(folder / name), "oom_kill"))
            except OSError:
                pass
        counts = [c for c in counts if c is not None]
        return max(counts) if counts else None

    @property
    def oom_counter_name(self) -> str:
        return f"cgroup v{self.version} " + ("memory.oom_control" if self.version == 1 else "memory.events")

    def pids(self) -> list[int]:
        try:
            found = [int(x) for x in _read(self.procs_file).split()]
        except (OSError, ValueError):
            return []
        return [p for p in found if p != os.getpid()] if self.shared else found

    def kill_all(self) -> int:
        """SIGKILL every member until none is left (members may fork meanwhile); return how many were hit."""
        hit = 0
        if self.version == 2 and not self.shared and (self.path / "cgroup.kill").exists():
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
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.02)
        return hit

    def remove(self, wait_s: float = 5.0) -> None:
        """rmdir once the members are gone (the kernel refuses while any remain), and the shared parent folder
        too when this was its last probe. A shared (enclosing) cgroup is never removed."""
        if self.shared:
            return
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


# ---------------------------------------------------------------------------------------------------- where
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


def delegate() -> Optional[Path]:
    """cgroup v2, ordinary user, own cgroup delegated: enable its memory controller for children, moving this
    process into a leaf of its own first (the kernel refuses while the cgroup holds processes). Done only when
    this process is the only one there; returns the leaf to undo later (None: nothing done)."""
    base = own(2)
    if os.geteuid() == 0 or base is None or not _writable(base) or base.name.startswith(f"{HOME}.p"):
        return None  # root needs none; an undelegated cgroup allows none; a home leaf means it is done already
    try:
        if "memory" in _read(base / "cgroup.subtree_control").split() or \
                "memory" not in _read(base / "cgroup.controllers").split():
            return None
        if set(int(p) for p in _read(base / "cgroup.procs").split()) != {os.getpid()}:
            return None  # others live here: moving them is not ours to do
        leaf = base / f"{HOME}.p{os.getpid()}"
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", str(os.getpid()))
        _write(base / "cgroup.subtree_control", "+memory")
        return leaf
    except OSError:
        return None


def undelegate(leaf: Optional[Path]) -> None:
    """Put back what :func:`delegate` changed: the memory controller off, this process back, the leaf gone.
    Left as it is while another run still uses the delegated cgroup."""
    if leaf is None:
        return
    base = leaf.parent
    try:
        (base / PARENT).rmdir()
    except OSError:
        pass
    try:
        _write(base / "cgroup.subtree_control", "-memory")
        _write(base / "cgroup.procs", str(os.getpid()))
        leaf.rmdir()
    except OSError:
        pass


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


# ---------------------------------------------------------------------------------------------------- create
def _create_v1(parent: Path, name: str, limit: Optional[int]) -> MemoryCgroup:
    path = parent / name
    parent.mkdir(exist_ok=True)
    path.mkdir(exist_ok=False)
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


def _create_v2(parent: Path, name: str, limit: Optional[int]) -> MemoryCgroup:
    base = parent.parent
    if "memory" not in _read(base / "cgroup.subtree_control").split():
        _write(base / "cgroup.subtree_control", "+memory")  # the root's only as root (find_parent says so)
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


def create(name: str, limit: Optional[int], parent: Optional[Parent] = None) -> tuple[Optional[MemoryCgroup], str]:
    """A fresh memory cgroup for one probe inside ``parent`` (default: :func:`find_parent`), or (None, why
    not). The name ends in ``.p<pid>`` of the creating process, so a later sweep can tell a cgroup whose
    creator is gone."""
    if parent is None:
        parent, why = find_parent()
        if parent is None:
            return None, f"no writable memory cgroup ({why})"
    name = f"{safe_name(name)[:180]}.p{os.getpid()}"
    make = _create_v1 if parent.version == 1 else _create_v2
    stale = parent.path / name
    if stale.exists():
        MemoryCgroup(parent.version, stale).kill_all()
        MemoryCgroup(parent.version, stale).remove()
    error = "unknown"
    for _ in range(3):  # the shared parent folder may vanish under us (its last probe removing it)
        try:
            return make(parent.path, name, limit), ""
        except FileNotFoundError as exc:
            error = exc.strerror or str(exc)
            continue
        except OSError as exc:
            error = exc.strerror or str(exc)
            break
    return None, f"no writable memory cgroup (v{parent.version} {parent.path}: {error})"


def _creator_alive(folder: Path) -> bool:
    match = re.search(r"\.p(\d+)$", folder.name)
    if not match:
        return True  # not named by us: leave it alone
    try:
        # the pid must belong to a process at least as old as the folder (a reused pid is a later process)
        return psutil.Process(int(match.group(1))).create_time() <= folder.stat().st_ctime + 1
    except (psutil.Error, OSError):
        return False


def sweep_stale(parent: Optional[Parent]) -> tuple[list[str], list[str]]:
    """Remove the empty probe cgroups of monitors that are gone (a crash between create and remove); return
    (removed, still holding processes). A stale cgroup with processes in it is left to ``--resume`` of its
    run, which kills exactly those."""
    removed, busy = [], []
    if parent is None or not parent.path.is_dir():
        return removed, busy
    for child in parent.path.iterdir():
        if not child.is_dir() or _creator_alive(child):
            continue
        try:
            child.rmdir()
            removed.append(f"v{parent.version} {child}")
        except OSError:
            busy.append(f"v{parent.version} {child}")
    try:
        parent.path.rmdir()
    except OSError:
        pass
    return removed, busy


def find(path: str) -> Optional[MemoryCgroup]:
    """The cgroup recorded as ``v1 /sys/fs/cgroup/...`` in a record, if it still exists."""
    match = re.match(r"^v([12]) (.+)$", path or "")
    if not match or not Path(match.group(2)).is_dir():
        return None
    return MemoryCgroup(int(match.group(1)), Path(match.group(2)))

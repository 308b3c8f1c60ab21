"""One memory cgroup, v1 or v2: its charge, limit, exact peak, OOM-kill counter, members; kill them all, remove
it. The files that differ between the two versions are named here and nowhere else."""
from __future__ import annotations

import errno
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PARENT = "hlrp-ladder"      # the folder probe cgroups are made in
HOME = "hlrp-ladder-home"   # v2 delegation: the leaf the orchestrator moves into
UNLIMITED = 1 << 60         # v1 writes "no limit" as a page-aligned 2^63-1; anything this large is no limit


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
        return int(text) if text.isdigit() and int(text) < UNLIMITED else None

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

    def subtree_oom_counts(self) -> dict[str, int]:
        """OOM kills anywhere under this cgroup, per folder: v2's memory.events is hierarchical (one entry); v1
        counts a kill only in the cgroup the victim sat in, so every folder below is read (a SLURM job's ``srun``
        tasks sit in ``step_0/task_N``, beside the runner's ``step_batch``)."""
        if self.version == 2:
            value = self.oom_kills()
            return {} if value is None else {str(self.path): value}
        out = {}
        for folder, _, _ in os.walk(self.path):
            try:
                value = _counter(_read(Path(folder) / "memory.oom_control"), "oom_kill")
            except OSError:
                continue
            if value is not None:
                out[folder] = value
        return out

    def subtree_pids(self) -> list[int]:
        """Every process in this cgroup and the cgroups below it (this one left out)."""
        out: list[int] = []
        for folder, _, _ in os.walk(self.path):
            try:
                out += [int(x) for x in _read(Path(folder) / "cgroup.procs").split()]
            except (OSError, ValueError):
                continue
        return [p for p in out if p != os.getpid()]

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


def find(path: str) -> Optional[MemoryCgroup]:
    """The cgroup recorded as ``v1 /sys/fs/cgroup/...`` in a record, if it still exists."""
    match = re.match(r"^v([12]) (.+)$", path or "")
    if not match or not Path(match.group(2)).is_dir():
        return None
    return MemoryCgroup(int(match.group(1)), Path(match.group(2)))

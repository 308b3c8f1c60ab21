"""Samples a probe's whole process tree: summed RSS (and PSS), process count, cgroup usage."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import psutil

from hlrp_ladder.probe.cgroup import MemoryCgroup

CSV_HEADER = "t,rss,pss,n_procs,cgroup\n"


@dataclass(frozen=True)
class Sample:
    t: float                       # seconds since the probe started
    rss: int                       # summed over the tree (double-counts pages shared by forked workers)
    pss: Optional[int]             # summed proportional set size, when the metric is pss
    n_procs: int
    cgroup: Optional[int]          # bytes charged to the probe's cgroup

    def csv(self) -> str:
        return f"{self.t:.3f},{self.rss},{'' if self.pss is None else self.pss},{self.n_procs}," \
               f"{'' if self.cgroup is None else self.cgroup}\n"


class TreeSampler:
    """Finds the tree's members (cgroup member list when there is one, else the root's descendants plus
    every process seen before that is still alive) and sums their memory."""

    def __init__(self, root_pid: int, cgroup: Optional[MemoryCgroup], with_pss: bool):
        self.root_pid, self.cgroup, self.with_pss = root_pid, cgroup, with_pss
        self.root = psutil.Process(root_pid)
        self.known: dict[int, psutil.Process] = {root_pid: self.root}
        self.start = time.monotonic()

    def _members(self) -> list[psutil.Process]:
        if self.cgroup is not None:
            # One read of cgroup.procs instead of a scan of /proc: cheaper and misses no orphan.
            members = []
            for pid in self.cgroup.pids():
                proc = self.known.get(pid)
                if proc is None or not proc.is_running():
                    try:
                        proc = self.known[pid] = psutil.Process(pid)
                    except psutil.Error:
                        continue
                members.append(proc)
            return members
        try:
            for child in self.root.children(recursive=True):
                self.known.setdefault(child.pid, child)
        except psutil.Error:
            pass
        return list(self.known.values())

    def sample(self) -> Sample:
        rss = pss = n = 0
        for proc in self._members():
            try:
                if self.with_pss:
                    info = proc.memory_full_info()
                    pss += info.pss
                else:
                    info = proc.memory_info()
                rss += info.rss
                n += 1
            except psutil.NoSuchProcess:  # gone: forget it, so a reused pid is never counted
                if proc.pid != self.root_pid:
                    self.known.pop(proc.pid, None)
            except psutil.Error:  # a zombie or unreadable between listing and reading
                continue
        usage = self.cgroup.usage() if self.cgroup is not None else None
        return Sample(time.monotonic() - self.start, rss, pss if self.with_pss else None, n, usage)

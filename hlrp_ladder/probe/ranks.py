"""The ranks of a distributed rung, found in the probe's tree by their environment, and their memory.

A rank is every process whose environment carries that rank (``RANK``, ``SLURM_PROCID``, ``OMPI_COMM_WORLD_RANK``
or ``PMI_RANK``, with the world size beside it): the rank's own process and the workers it forks, which inherit
it. The launcher (torchrun's agent, srun, a script that spawns its ranks) carries none. Each environment is read
once, from ``/proc/<pid>/environ`` (psutil), when the sampler first sees the process.

A rank *ends* when none of its processes runs any more. Which one ended first, and whether the kernel
OOM-killed it, is what the runner decides a distributed rung by: the others' deaths are consequences.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import psutil

from hlrp_ladder.records import RankPeak

KEYS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("PMI_RANK", "PMI_SIZE"))
CSV_HEADER = "t,rank,rss,gpu\n"


def rank_of(environ: dict[str, str], own: Optional[dict[str, str]] = None) -> Optional[tuple[int, Optional[int]]]:
    """(rank, world size) from a process's environment, or None for a process that is no rank. A value the process
    inherited from the runner itself (``own``: inside a SLURM batch step every process has SLURM_PROCID=0, the
    ``srun`` client too) is no rank: a task has its own step (SLURM_STEP_ID) or its own value."""
    own = own or {}
    for rank_key, size_key in KEYS:
        value = environ.get(rank_key, "")
        if rank_key in own and value == own[rank_key] and environ.get("SLURM_STEP_ID") == own.get("SLURM_STEP_ID"):
            continue
        if value.isdigit():
            size = environ.get(size_key, "")
            return int(value), int(size) if size.isdigit() else None
    return None


@dataclass
class RankEnd:
    """The rank whose end decided a distributed rung, and how it ended."""
    rank: int
    world: Optional[int]
    pid: int
    oom: bool                             # the kernel OOM-killed it
    named_by: str                         # how it is known: the kernel log, the cgroup's counter, the first to end
    rss_bytes: int                        # its RSS in the last sample it was alive for
    others: list[int]                     # the other ranks
    grace_s: float = 0.0
    by_runner: bool = True                # the runner killed the others (False: the launcher had ended them)


@dataclass
class Rank:
    rank: int
    peak: RankPeak
    pids: set[int] = field(default_factory=set)
    ended_at: Optional[float] = None      # monotonic time it was first seen with no process running


class Ranks:
    """The ranks seen so far in one probe's tree, with each rank's memory per sample."""

    def __init__(self, own: Optional[dict[str, str]] = None) -> None:
        self.own = dict(own if own is not None else os.environ)   # the runner's: what its children inherit
        self.ranks: dict[int, Rank] = {}
        self.world: Optional[int] = None
        self.checked: set[int] = set()     # pids whose environment was read (ranks or not)

    def scan(self, procs: dict[int, psutil.Process]) -> None:
        """Read the environment of the processes not seen before."""
        for pid, proc in procs.items():
            if pid in self.checked:
                continue
            self.checked.add(pid)
            try:
                found = rank_of(proc.environ(), self.own)
            except (psutil.Error, OSError):   # gone, or not ours to read
                continue
            if found is None:
                continue
            rank, world = found
            self.world = world or self.world
            entry = self.ranks.setdefault(rank, Rank(rank, RankPeak(pid=pid)))
            entry.pids.add(pid)

    def sample(self, t: float, rss_by_pid: dict[int, int], gpu_by_pid: Optional[dict[int, int]]) -> list[str]:
        """Each rank's memory now (its processes' summed RSS and GPU memory), its peaks updated; csv rows. A rank
        none of whose processes was read now (or only as a zombie: RSS 0) has ended."""
        rows = []
        now = time.monotonic()
        for rank in self.ranks.values():
            alive = [pid for pid in rank.pids if rss_by_pid.get(pid, 0) > 0]
            if not alive:
                if rank.ended_at is None:
                    rank.ended_at = now
                continue
            rss = sum(rss_by_pid[pid] for pid in alive)
            gpu = None if gpu_by_pid is None else sum(gpu_by_pid.get(pid, 0) for pid in alive)
            p = rank.peak
            p.rss_bytes, p.last_rss_bytes = max(p.rss_bytes, rss), rss
            if gpu is not None:
                p.gpu_bytes = max(p.gpu_bytes or 0, gpu)
            rows.append(f"{t:.3f},{rank.rank},{rss},{'' if gpu is None else gpu}\n")
        return rows

    def worst_rss(self, rss_by_pid: dict[int, int]) -> Optional[int]:
        """The largest rank's RSS now (None before a rank was found)."""
        values = [sum(rss_by_pid.get(pid, 0) for pid in r.pids) for r in self.ranks.values() if r.ended_at is None]
        return max(values) if values else None

    def first_ended(self) -> Optional[Rank]:
        """The rank seen ended first, while another still ran (None: none yet, or all ended together)."""
        ended = sorted((r for r in self.ranks.values() if r.ended_at is not None), key=lambda r: r.ended_at)
        running = [r for r in self.ranks.values() if r.ended_at is None]
        return ended[0] if ended and running else None

    def running(self) -> list[int]:
        return sorted(r.rank for r in self.ranks.values() if r.ended_at is None)

    def named(self, victims: Iterable[int]) -> Optional[Rank]:
        """The rank one of ``victims`` (pids the kernel log names as OOM-killed) belonged to."""
        victims = set(victims)
        return next((r for r in sorted(self.ranks.values(), key=lambda r: r.rank) if r.pids & victims), None)

    def peaks(self) -> dict[str, RankPeak]:
        return {str(r.rank): r.peak for r in sorted(self.ranks.values(), key=lambda r: r.rank)}

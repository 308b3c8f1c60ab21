"""The ranks of a distributed rung, found in the probe's tree by their environment, their memory, and how the
first of them ended.

A rank is every process whose environment carries that rank (``RANK``, ``SLURM_PROCID``, ``OMPI_COMM_WORLD_RANK``,
``PMI_RANK``, else ``LOCAL_RANK``; the world size beside it): the rank's own process (its *leader*, the oldest)
and the workers it forks, which inherit it. The launcher (torchrun's agent, srun, a script that spawns its ranks)
carries none. Each environment is read from ``/proc/<pid>/environ`` (psutil) when the sampler first sees the
process, and again once a moment later (a process caught between fork and exec still shows its parent's).

A rank has *ended* when its leader is gone or a zombie. Which rank ended first, and whether the kernel OOM-killed
it, decides a distributed rung; the others' deaths are consequences. What is known, and how, is kept apart from
what is not: an OOM kill is attributed to a rank only when the kernel log names one of its processes, or when it
was the only rank to end in the sample interval in which the OOM counter rose; otherwise the rung is still a
memory verdict, but "which rank cannot be told". A rank that ended otherwise decides only with its failure on
record: its leader's exit code read while it was a zombie, or srun's "task N: Exited with exit code C" line.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

import psutil

from hlrp_ladder.records import RankPeak

KEYS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("PMI_RANK", "PMI_SIZE"), ("LOCAL_RANK", "LOCAL_WORLD_SIZE"))
INHERITED = ("SLURM_PROCID",)   # a SLURM batch step gives every process SLURM_PROCID=0, the srun client too
CSV_HEADER = "t,rank,rss,gpu\n"
SRUN_EXIT = re.compile(r"task (\d+): Exited with exit code (\d+)")
RECHECK_S = 0.5                 # a non-rank process's environment is read once more after this long


def rank_of(environ: dict[str, str], own: Optional[dict[str, str]] = None) -> Optional[tuple[int, Optional[int]]]:
    """(rank, world size) from a process's environment, or None for a process that is no rank. ``SLURM_PROCID``
    inherited from the runner's own batch step (same value, same step) is no rank: a task has its own step."""
    own = own or {}
    for rank_key, size_key in KEYS:
        value = environ.get(rank_key, "")
        if rank_key in INHERITED and rank_key in own and value == own[rank_key] and \
                environ.get("SLURM_STEP_ID") == own.get("SLURM_STEP_ID"):
            continue
        if value.isdigit():
            size = environ.get(size_key, "")
            return int(value), int(size) if size.isdigit() else None
    return None


def zombie_exit_code(pid: int) -> Optional[int]:
    """A zombie's exit status as the kernel keeps it until its parent reaps it (/proc/<pid>/stat, field 52);
    None for a process that is not a zombie (or gone)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if not fields or fields[0] != "Z" or len(fields) < 50:
        return None
    status = int(fields[49])
    return -(status & 0x7F) if status & 0x7F else status >> 8


def srun_failures(log_tail: list[str]) -> dict[int, int]:
    """task -> exit code of each task srun reported as exited non-zero."""
    out = {}
    for line in log_tail:
        for task, code in SRUN_EXIT.findall(line):
            if int(code):
                out[int(task)] = int(code)
    return out


@dataclass
class RankEnd:
    """The rank whose end decided a distributed rung, and how it ended (``rank`` None: an OOM kill no one rank can
    be named for)."""
    rank: Optional[int]
    world: Optional[int]
    pid: Optional[int]                    # the process named as killed (the kernel log's), or the rank's leader
    oom: bool                             # the kernel OOM-killed it
    named_by: str                         # how it is known
    rss_bytes: int                        # its RSS in the last sample it was alive for
    others: list[int]                     # the other ranks
    grace_s: float = 0.0
    by_runner: bool = True                # the runner killed the others (False: they had ended without it)
    exit_code: Optional[int] = None       # a failure's exit code, where it is on record


@dataclass
class Rank:
    rank: int
    peak: RankPeak
    pids: dict[int, float] = field(default_factory=dict)   # pid -> create time (a reused pid is another process)
    ended_at: Optional[float] = None      # monotonic time its leader was first seen gone
    oom_in_interval: bool = False         # the OOM counter rose in the sample interval in which it ended
    exit_code: Optional[int] = None       # its leader's exit code, read while it was a zombie

    @property
    def leader(self) -> int:
        return min(self.pids, key=lambda pid: (self.pids[pid], pid))


class Ranks:
    """The ranks seen so far in one probe's tree, with each rank's memory per sample."""

    def __init__(self, expected: int = 0, own: Optional[dict[str, str]] = None) -> None:
        self.expected = expected
        self.own = dict(own if own is not None else os.environ)   # the runner's: what its children inherit
        self.ranks: dict[int, Rank] = {}
        self.world: Optional[int] = None
        self.checked: dict[tuple[int, float], float] = {}   # (pid, create time) -> when its environment was read
        self.last_count: Optional[int] = None

    @property
    def found(self) -> int:
        return len(self.ranks)

    @property
    def complete(self) -> bool:
        """Every expected rank was found (naming one is sound only then)."""
        return self.found >= max(1, self.world or self.expected)

    def scan(self, procs: dict[int, psutil.Process]) -> None:
        """Read the environment of the processes not seen before (and of non-ranks once more, a moment later);
        forget processes that left the tree."""
        now = time.monotonic()
        live = set()
        for pid, proc in procs.items():
            try:
                key = (pid, proc.create_time())
            except psutil.Error:
                continue
            live.add(key)
            read_at = self.checked.get(key)
            if read_at is not None and (read_at < 0 or now - read_at < RECHECK_S):
                continue
            try:
                found = rank_of(proc.environ(), self.own)
            except (psutil.Error, OSError):   # gone, or not ours to read
                continue
            self.checked[key] = -1.0 if (found is not None or read_at is not None) else now
            if found is None:
                continue
            rank, world = found
            self.world = world or self.world
            entry = self.ranks.setdefault(rank, Rank(rank, RankPeak(pid=pid)))
            entry.pids[pid] = key[1]
            entry.peak.pid = entry.leader
        self.checked = {k: v for k, v in self.checked.items() if k in live}

    def sample(self, t: float, rss_by_pid: dict[int, int], gpu_by_pid: Optional[dict[int, int]],
               oom_count: Optional[int] = None) -> list[str]:
        """Each rank's memory now (its processes' summed RSS and GPU memory), its peaks updated; csv rows.
        ``oom_count``: the OOM counter now, to tell in which interval a rank ended. ``gpu_by_pid`` None: GPU memory
        not attributable per process this sample."""
        rows = []
        now = time.monotonic()
        rose = oom_count is not None and self.last_count is not None and oom_count > self.last_count
        for rank in self.ranks.values():
            leader = rank.leader
            alive = rss_by_pid.get(leader, 0) > 0    # a zombie reads RSS 0
            if not alive:
                if rank.ended_at is None:
                    rank.ended_at, rank.oom_in_interval = now, rose
                if rank.exit_code is None:
                    # read on every sample until it is there: an exiting process has released its memory (RSS 0)
                    # a moment before it becomes a zombie, whose exit code the kernel then keeps until it is reaped
                    rank.exit_code = zombie_exit_code(leader)
                continue
            rank.ended_at = None   # one missed read is no end
            members = [pid for pid in rank.pids if rss_by_pid.get(pid, 0) > 0]
            rss = sum(rss_by_pid[pid] for pid in members)
            gpu = None if gpu_by_pid is None else sum(gpu_by_pid.get(pid, 0) for pid in members)
            p = rank.peak
            p.rss_bytes, p.last_rss_bytes = max(p.rss_bytes, rss), rss
            if gpu is not None:
                p.gpu_bytes = max(p.gpu_bytes or 0, gpu)
            rows.append(f"{t:.3f},{rank.rank},{rss},{'' if gpu is None else gpu}\n")
        if oom_count is not None:
            self.last_count = oom_count
        return rows

    def worst_rss(self, rss_by_pid: dict[int, int]) -> Optional[tuple[int, int]]:
        """(rank, RSS now) of the largest running rank; None before every expected rank was found."""
        if not self.complete:
            return None
        values = [(sum(rss_by_pid.get(pid, 0) for pid in r.pids), r.rank) for r in self.ranks.values()
                  if r.ended_at is None]
        return (max(values)[1], max(values)[0]) if values else None

    def ended(self) -> list[Rank]:
        return sorted((r for r in self.ranks.values() if r.ended_at is not None), key=lambda r: r.ended_at)

    def running(self) -> list[int]:
        return sorted(r.rank for r in self.ranks.values() if r.ended_at is None)

    def named(self, victims: Iterable[int]) -> Optional[tuple[Rank, int]]:
        """The rank one of ``victims`` (pids the kernel log names as OOM-killed) belonged to, and that pid."""
        victims = set(victims)
        for rank in sorted(self.ranks.values(), key=lambda r: r.rank):
            hit = set(rank.pids) & victims
            if hit:
                return rank, min(hit)
        return None

    def decide(self, *, killed: Optional[set[int]], oom_rose: bool, failures: dict[int, int], grace_s: float,
               agent: bool, final: bool = False) -> Optional[RankEnd]:
        """Whether how the ranks have ended decides the rung now. ``killed``: pids the kernel log named as
        OOM-killed (None: unreadable); ``oom_rose``: the OOM counter rose since the probe began; ``failures``:
        srun's failed tasks; ``agent``: the launcher ends the others itself on a failure (torchrun), so a failure
        that is no OOM kill is left to it; ``final``: the tree is gone (the verdict of what happened)."""
        ended = self.ended()
        running = self.running()
        if not ended or (not running and not final):
            return None
        others = lambda r: [x for x in sorted(self.ranks) if x != r]  # noqa: E731
        # 1. the kernel log names the victim: certain
        hit = self.named(killed or ())
        if hit is not None:
            rank, pid = hit
            return RankEnd(rank.rank, self.world, pid, True, "named in the kernel log", rank.peak.last_rss_bytes,
                           others(rank.rank))
        if oom_rose:
            # 2. the only rank that ended in an interval in which the counter rose
            flagged = [r for r in ended if r.oom_in_interval]
            together = [r for r in ended if r.ended_at == flagged[0].ended_at] if flagged else []
            if len(flagged) == 1 and len(together) == 1 and self.complete:
                rank = flagged[0]
                return RankEnd(rank.rank, self.world, rank.leader, True,
                               "the only rank to end as the cgroup's oom_kill counter rose", rank.peak.last_rss_bytes,
                               others(rank.rank))
            if flagged or final:
                why = (f"{len(together)} ranks ended in the same sample" if len(together) > 1 else
                       f"only {self.found} of {self.world or self.expected} ranks were found" if not self.complete
                       else "no rank ended as the counter rose")
                return RankEnd(None, self.world, None, True, f"which rank cannot be told: {why}", 0,
                               sorted(self.ranks))
        # 3. a rank failed for another reason, on record (its zombie's exit code, srun's line): after the grace
        first = ended[0]
        code = first.exit_code if first.exit_code else failures.get(first.rank)
        if agent or not code or not self.complete:
            return None
        if not final and time.monotonic() - first.ended_at < grace_s:
            return None
        return RankEnd(first.rank, self.world, first.leader, False, "the first to end, with its failure on record",
                       first.peak.last_rss_bytes, others(first.rank), grace_s, exit_code=code)

    def peaks(self) -> dict[str, RankPeak]:
        return {str(r.rank): r.peak for r in sorted(self.ranks.values(), key=lambda r: r.rank)}

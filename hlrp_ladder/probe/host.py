"""Facts about the machine probes run on here: its memory as the probes can use it, and where their cgroups go.
A run resolves them once when it starts and stores them in ``ladder.json``: a report written later, or on
another machine, judges with these numbers, not its own."""
from __future__ import annotations

import os
import platform
from typing import Optional

import psutil

from hlrp_ladder.probe import cgroup
from hlrp_ladder.probe.cgroup.handle import UNLIMITED


def cgroup_limit() -> Optional[int]:
    """The smallest memory limit of the cgroups this process sits in (a container's, a SLURM job's), if any."""
    limits = []
    for folder in cgroup.own_dirs():
        for name in ("memory.max", "memory.limit_in_bytes"):
            try:
                text = (folder / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < UNLIMITED:
                limits.append(int(text))
    return min(limits) if limits else None


def usable_memory() -> int:
    """What this process can really use: the smallest of MemTotal and the limits of the cgroups above it.
    Percentages in a spec (``rss_limit: 85%``) resolve against this."""
    total = psutil.virtual_memory().total
    limit = cgroup_limit()
    return min(total, limit) if limit else total


def facts(cap_bytes: Optional[int]) -> dict:
    """The host's facts for ``ladder.json``: name, cores, RAM, usable memory, where probe cgroups go, and
    whether a cap can be enforced (tried for real, with a throwaway cgroup)."""
    parent, note = cgroup.find_parent()
    cg = None
    if parent is not None:
        cg, note = cgroup.create(f"hostcheck-{os.getpid()}", cap_bytes, parent)
        if cg is not None:
            cg.remove()
    return {"name": platform.node(), "cores": psutil.cpu_count(), "ram_bytes": psutil.virtual_memory().total,
            "usable_bytes": usable_memory(), "cgroup": f"v{parent.version}" if cg is not None else None,
            "cgroup_parent": str(parent) if cg is not None else None,
            "cap_enforced": None if cap_bytes is None else cg is not None, "cgroup_note": note}

"""cgroup v2 delegation for an ordinary user. The memory controller can be enabled for the children of a cgroup
only while it holds no process ("no internal processes"): :func:`delegate` moves this process into a leaf of
its own first, when it is the only one there, and :func:`undelegate` puts everything back at the end."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from hlrp_ladder.probe.cgroup.discovery import own
from hlrp_ladder.probe.cgroup.handle import HOME, PARENT, _read, _write
from hlrp_ladder.probe.cgroup.discovery import _writable


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

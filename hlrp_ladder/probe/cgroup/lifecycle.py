"""Making one fresh memory cgroup per probe (capped), and sweeping the ones whose creator is gone."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import psutil

from hlrp_ladder.probe.cgroup.discovery import Parent, find_parent
from hlrp_ladder.probe.cgroup.handle import MemoryCgroup, _read, _write


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:200]


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

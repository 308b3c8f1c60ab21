"""Executors submit probes and hand back handles to poll, cancel and re-attach; each runs the same node-side
runner, so each writes the same probe folder. ``local`` runs them here; ``slurm`` as SLURM jobs."""
from __future__ import annotations

from pathlib import Path

from hlrp_ladder.executors.core import Executor, Handle
from hlrp_ladder.executors.local import LocalExecutor
from hlrp_ladder.executors.slurm import SlurmExecutor
from hlrp_ladder.probe.folder import SUBMITTED, read_json
from hlrp_ladder.spec.model import Spec


def create(spec: Spec) -> Executor:
    """The executor a spec names."""
    if spec.executor.kind == "slurm":
        return SlurmExecutor(spec.executor.slurm, spec.name)
    return LocalExecutor()


def for_folder(folder: Path) -> Executor:
    """The executor that submitted the probe in ``folder`` (its ``submitted.json``), to find it again."""
    info = read_json(folder / SUBMITTED) or {}
    if info.get("executor") == "slurm":
        return SlurmExecutor.from_submitted(info)
    return LocalExecutor()


__all__ = ["Executor", "Handle", "LocalExecutor", "SlurmExecutor", "create", "for_folder"]

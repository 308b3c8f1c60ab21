"""Executors submit probes and hand back handles to poll, cancel and re-attach; each runs the same node-side
runner, so each writes the same probe folder. ``local`` runs them here; ``slurm`` as SLURM jobs."""
from __future__ import annotations

from typing import Optional

from hlrp_ladder.executors.core import Executor, Handle


def create(spec) -> tuple[Executor, Optional[dict]]:
    """The executor a spec names, and the facts of the machines it runs probes on (None: this one)."""
    if spec.executor.kind == "slurm":
        from hlrp_ladder.executors.slurm import SlurmExecutor

        executor = SlurmExecutor(spec.executor.slurm, spec.name)
        return executor, executor.facts(spec)
    from hlrp_ladder.executors.local import LocalExecutor

    return LocalExecutor(), None


def for_folder(folder) -> Executor:
    """The executor that submitted the probe in ``folder`` (its ``submitted.json``), to find it again."""
    from hlrp_ladder.executors.core import SUBMITTED, read_json

    info = read_json(folder / SUBMITTED) or {}
    if info.get("executor") == "slurm":
        from hlrp_ladder.executors.slurm import SlurmExecutor

        return SlurmExecutor.from_submitted(info)
    from hlrp_ladder.executors.local import LocalExecutor

    return LocalExecutor()


__all__ = ["Executor", "Handle", "create", "for_folder"]

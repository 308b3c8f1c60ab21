"""The executor interface, in submitit's shape: ``submit(request) -> Handle``; a handle is polled, cancelled, or
found again after the orchestrator died (``reattach``). Every executor runs the same node-side probe runner
(``python -m hlrp_ladder.probe FOLDER``) and so writes the same probe folder (``probe.folder``); it adds only
what it alone knows: the machines probes run on, how to start and stop a probe, what it left behind, and its
own evidence (a SLURM job's state) merged into the record. Nothing outside ``executors/`` asks which executor it
has: what differs between them is a method here.
"""
from __future__ import annotations

from pathlib import Path
from typing import ContextManager, Optional, Protocol

from hlrp_ladder.records import ProbeRecord, ProbeRequest
from hlrp_ladder.spec.sections import ExecutorSpec


class Handle(Protocol):
    """One submitted probe."""
    request: ProbeRequest

    def poll(self) -> Optional[ProbeRecord]:
        """The record once the probe has ended (its executor's evidence merged in), else None. Cheap."""
        ...

    def cancel(self) -> None:
        """Stop it; the record that follows says ``interrupted``."""
        ...

    def state(self) -> str:
        """'pending' (not started yet), 'running' or 'ended' (a record is there or can be made). No side effect."""
        ...

    def where(self) -> str:
        """Where it runs, for a person: 'pid 1234', 'SLURM job 17 (RUNNING on node3)'."""
        ...

    def waitable(self) -> Optional[int]:
        """A file descriptor that becomes readable when the probe ends, for the orchestrator to wake on; None
        when there is none (then it polls)."""
        ...


class Executor(Protocol):
    name: str

    def usable_memory(self) -> int:
        """Bytes a probe can really use on the machines this executor runs probes on (what a spec's
        percentages resolve against)."""
        ...

    def facts(self, cap_bytes: Optional[int]) -> dict:
        """Those machines' facts for ``ladder.json`` (name, cores, RAM, usable memory, where probe cgroups go,
        whether a cap of ``cap_bytes`` can be enforced there)."""
        ...

    def configure(self, facts: dict) -> None:
        """Run probes as ``facts`` say (where their cgroups go): a new run's, as it stores them; on resume, the
        machine's read afresh."""
        ...

    def session(self) -> ContextManager:
        """What a run needs around it on this executor (locally: cgroup v2 delegation for an ordinary user)."""
        ...

    def sweep(self) -> list[str]:
        """Before a run: remove what monitors that are gone left behind; a note on each."""
        ...

    def slot_cores(self, spec: ExecutorSpec) -> Optional[list[list[int]]]:
        """Each parallel slot's cores, where this executor pins them (None: no pinning)."""
        ...

    def slot_gpus(self, spec: ExecutorSpec) -> Optional[list[list[int]]]:
        """Each parallel slot's own GPUs, where this executor hands them out (None: it does not; a scheduler
        allocates them per job)."""
        ...

    def submit(self, request: ProbeRequest, detached: bool = False, name: Optional[str] = None) -> Handle:
        """Start a probe (``detached``: the long run, which outlives the orchestrator; ``name``: its session or
        job name)."""
        ...

    def reattach(self, folder: Path) -> Optional[Handle]:
        """A handle to a probe submitted by an orchestrator that is gone, if it still runs or ended without
        being collected; None if it is gone for good."""
        ...

    def settle(self, folders: list[Path]) -> list[str]:
        """On resume: of these finished probes, those whose record lacks this executor's evidence (the orchestrator
        was gone when they ended) get it merged now, in one query for all; a note for each (locally: none)."""
        ...

    def cancel_all(self, handles: list[Handle]) -> None:
        """Ctrl-C: cancel them all, in one call where the executor can (SLURM: one scancel)."""
        ...

    def calls(self) -> dict[str, int]:
        """The scheduler calls this process made, by tool (SLURM: sbatch, squeue, sacct, scancel; ``polls``: the
        watcher's), for the run's record; empty where there is no scheduler."""
        ...

    def cleanup(self, folder: Path) -> int:
        """Kill whatever an unfinished probe left behind; how many processes (or jobs) it hit."""
        ...

    def launch_words(self, name: str, folder: Path) -> tuple[str, str]:
        """How a detached long run named ``name`` starts here, and how to watch it: two phrases for a person."""
        ...

"""Probes in flight on an executor's slots, for the ladder and for compare: submit into a free slot (locally its
own cores), poll every handle, show their memory live, and on Ctrl-C cancel them all and wait for their
records. The orchestrator never waits on one probe."""
from __future__ import annotations

import select
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from hlrp_ladder.executors.core import Executor, Handle
from hlrp_ladder.probe.folder import ProbeFolder
from hlrp_ladder.records import Outcome, ProbeRecord, ProbeRequest
from hlrp_ladder.run.live import LiveView

POLL_S = 0.05         # how often running probes are polled (a file read locally; a SLURM executor caches its state)
CANCEL_WAIT_S = 60.0  # after Ctrl-C, how long to wait for the probes to confirm they stopped


@dataclass
class InFlight:
    """A probe in flight: what the caller runs it for (``tag``), its handle, the slot it holds."""
    tag: Any
    handle: Handle
    index: int
    cancelled: bool = False          # by the caller (no longer needed), not by the user

    @property
    def request(self) -> ProbeRequest:
        return self.handle.request


class Flight:
    """The probes in flight on an executor's ``slots`` (locally each slot has its own ``cores`` and ``gpus``)."""

    def __init__(self, executor: Executor, slots: int, cores: Optional[list[list[int]]], view: LiveView,
                 gpus: Optional[list[list[int]]] = None):
        self.executor, self.slots, self.cores, self.view, self.gpus = executor, slots, cores, view, gpus
        self.slots_in_use: list[InFlight] = []

    def __bool__(self) -> bool:
        return bool(self.slots_in_use)

    def adopt(self, tag: Any, handle: Handle) -> None:
        """A probe already running (re-attached on resume)."""
        self.slots_in_use.append(InFlight(tag, handle, self.free()[0] if self.free() else len(self.slots_in_use)))
        self.view.start(handle.request)

    def free(self) -> list[int]:
        used = {s.index for s in self.slots_in_use}
        return [i for i in range(self.slots) if i not in used]

    def wait(self, timeout: float = POLL_S) -> None:
        """Sleep until the next poll, or less: until a probe's runner exits, where its handle can say when (a
        local runner's pidfd). Between two 5 s probes a blind poll cost half its period on average."""
        fds = [fd for fd in (s.handle.waitable() for s in self.slots_in_use) if fd is not None]
        if not fds:
            time.sleep(timeout)
            return
        waiter = select.poll()  # not select(): it fails on descriptors past 1023
        for fd in fds:
            waiter.register(fd, select.POLLIN)
        waiter.poll(timeout * 1000)

    def cores_of(self, index: int) -> Optional[list[int]]:
        return self.cores[index] if self.cores else None

    def gpus_of(self, index: int) -> Optional[list[int]]:
        """The slot's own GPUs (None: the executor hands out none; the probe sees what its node shows it)."""
        return self.gpus[index] if self.gpus else None

    def submit(self, tag: Any, index: int, request: ProbeRequest) -> None:
        self.view.start(request)
        self.slots_in_use.append(InFlight(tag, self.executor.submit(request), index))

    def tags(self) -> list:
        return [s.tag for s in self.slots_in_use if not s.cancelled]

    def cancel(self, tag: Any) -> None:
        for slot in self.slots_in_use:
            if slot.tag == tag and not slot.cancelled:
                slot.cancelled = True
                slot.handle.cancel()

    def poll(self, collect: Callable[[InFlight, ProbeRecord], ProbeRecord]) -> None:
        """Hand every finished probe's record to ``collect`` (which returns it as kept); show the others'
        memory."""
        for slot in list(self.slots_in_use):
            record = slot.handle.poll()
            if record is not None:
                self.slots_in_use.remove(slot)
                self.view.finish(collect(slot, record), slot.request.folder)
        for slot in self.slots_in_use:
            sample = ProbeFolder(slot.request.folder).last_sample()
            if sample is not None:
                self.view.on_sample(slot.request, sample)

    def abandon(self, wait_s: float = 15.0) -> None:
        """A full disk: cancel every probe and wait (a while) for each to end, collecting nothing (no record can
        be written; a resume runs them again)."""
        self.executor.cancel_all([s.handle for s in self.slots_in_use])
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(s.handle.state() != "ended" for s in self.slots_in_use):
            time.sleep(POLL_S)
        self.slots_in_use.clear()
        self.view.close()

    def stop(self, collect: Callable[[InFlight, ProbeRecord], ProbeRecord]) -> None:
        """Ctrl-C: cancel every probe, wait for their records; one that cannot be confirmed is recorded so."""
        self.executor.cancel_all([s.handle for s in self.slots_in_use])  # on SLURM: one scancel for all
        deadline = time.monotonic() + CANCEL_WAIT_S
        while self.slots_in_use and time.monotonic() < deadline:
            self.poll(collect)
            time.sleep(POLL_S)
        for slot in list(self.slots_in_use):
            self.slots_in_use.remove(slot)
            record = ProbeFolder(slot.request.folder).substitute(
                slot.request, Outcome.interrupted, f"stopped by the user; {slot.handle.where()} did not confirm "
                f"within {CANCEL_WAIT_S:.0f} s", None, time.time())
            self.view.finish(collect(slot, record), slot.request.folder)

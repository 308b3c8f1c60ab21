"""The executor interface: what a probe needs to run, and the one call every executor answers."""
from __future__ import annotations

from typing import Callable, Optional, Protocol

from hlrp_ladder.records import ProbeRecord, ProbeRequest

OnSample = Callable[[ProbeRequest, "object"], None]
ShouldStop = Callable[[], bool]


class Executor(Protocol):
    name: str

    def run(self, request: ProbeRequest, on_sample: Optional[OnSample] = None,
            should_stop: Optional[ShouldStop] = None) -> ProbeRecord:
        """Run one probe to its end and return its record (also written to ``folder/result.json``)."""
        ...


__all__ = ["Executor", "OnSample", "ProbeRequest", "ShouldStop"]

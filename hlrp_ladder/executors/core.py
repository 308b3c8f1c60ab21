"""The executor interface: what a probe needs to run, and the one call every executor answers."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

from hlrp_ladder.records import ProbeRecord
from hlrp_ladder.spec import MetricsRegex


@dataclass(frozen=True)
class ProbeRequest:
    folder: Path                   # the probe folder; created by the executor
    batch_size: int
    phase: str
    attempt: int
    argv: list[str]                # run as is: no shell, values passed literally
    env: dict[str, str]            # added to the orchestrator's environment
    cwd: str
    rss_limit_bytes: int
    cap_bytes: Optional[int]
    metric: str                    # "rss" | "pss"
    interval_s: float
    timeout_s: Optional[float]     # None: no limit (the long run)
    kill_grace_s: float
    cgroup_name: str
    metrics_regex: MetricsRegex = field(default_factory=MetricsRegex)
    repeat: int = 0


OnSample = Callable[[ProbeRequest, "object"], None]
ShouldStop = Callable[[], bool]


class Executor(Protocol):
    name: str

    def run(self, request: ProbeRequest, on_sample: Optional[OnSample] = None,
            should_stop: Optional[ShouldStop] = None) -> ProbeRecord:
        """Run one probe to its end and return its record (also written to ``folder/result.json``)."""
        ...

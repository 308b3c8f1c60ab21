"""The local executor: the probe runs here, as a child process in its own session and memory cgroup.

It mirrors cluster semantics: a job gets a memory limit enforced by the kernel, an exact peak from the
kernel's accounting, and is killed whole.
"""
from __future__ import annotations

from typing import Optional

from hlrp_ladder.executors.core import OnSample, ProbeRequest, ShouldStop
from hlrp_ladder.probe.runner import run_probe
from hlrp_ladder.records import ProbeRecord


class LocalExecutor:
    name = "local"

    def run(self, request: ProbeRequest, on_sample: Optional[OnSample] = None,
            should_stop: Optional[ShouldStop] = None) -> ProbeRecord:
        return run_probe(request, on_sample, should_stop)

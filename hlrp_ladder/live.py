"""What a person sees during ``run``: a rich live line per probe on a terminal, plain lines elsewhere."""
from __future__ import annotations

import time
from typing import Optional

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from hlrp_ladder.executors.core import ProbeRequest
from hlrp_ladder.policy import describe
from hlrp_ladder.probe.sampler import Sample
from hlrp_ladder.records import ProbeRecord
from hlrp_ladder.sizes import gib

PLAIN_EVERY_S = 10.0


class LiveView:
    def __init__(self, console: Optional[Console] = None):
        self.console = console or Console(stderr=True)
        self.interactive = self.console.is_terminal
        self.live: Optional[Live] = None
        self.last_plain = 0.0

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def start(self, request: ProbeRequest) -> None:
        line = f"[{request.phase}] bs={request.batch_size}: starting ({request.folder})"
        if self.interactive:
            self.live = Live(self._render(request, None), console=self.console, refresh_per_second=4,
                             transient=True)
            self.live.start()
        else:
            self.message(line)
        self.last_plain = time.monotonic()

    def _render(self, request: ProbeRequest, sample: Optional[Sample]) -> Table:
        table = Table.grid(padding=(0, 1))
        used = 0 if sample is None else (sample.pss if request.metric == "pss" and sample.pss else sample.rss)
        cap = "" if request.cap_bytes is None or sample is None or sample.cgroup is None else \
            f" cgroup {gib(sample.cgroup)} / cap {gib(request.cap_bytes)}"
        elapsed = 0 if sample is None else sample.t
        table.add_row(f"[bold]{request.phase} bs={request.batch_size}[/]", f"{elapsed:6.1f} s",
                      ProgressBar(total=request.rss_limit_bytes, completed=min(used, request.rss_limit_bytes),
                                  width=30),
                      f"{request.metric} {gib(used)} / {gib(request.rss_limit_bytes)}{cap}",
                      f"procs {0 if sample is None else sample.n_procs}")
        return table

    def on_sample(self, request: ProbeRequest, sample: Sample) -> None:
        if self.live is not None:
            self.live.update(self._render(request, sample))
        elif time.monotonic() - self.last_plain >= PLAIN_EVERY_S:
            self.last_plain = time.monotonic()
            self.message(f"[{request.phase}] bs={request.batch_size}: {sample.t:.0f} s, "
                         f"{request.metric} {gib(sample.rss)}, {sample.n_procs} procs")

    def finish(self, record: ProbeRecord) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        rate = f", {record.metrics.samples_per_s:.1f} samples/s" if record.metrics.samples_per_s else ""
        self.message(f"[{record.phase}] {describe(record)} ({record.duration_s:.1f} s{rate})")

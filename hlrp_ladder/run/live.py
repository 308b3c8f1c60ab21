"""What a person sees during ``run``: on a terminal a rich live table, one row per running probe (several with
parallel slots); elsewhere plain lines."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from hlrp_ladder.probe.folder import Sample
from hlrp_ladder.records import ProbeRecord, ProbeRequest
from hlrp_ladder.search.words import probe_clause
from hlrp_ladder.util.sizes import gib

PLAIN_EVERY_S = 10.0


def _measured(request: ProbeRequest, sample: Optional[Sample]) -> tuple[str, int]:
    """What the soft limit is judged on, and its value: PSS when the metric is pss and the sample has it, else RSS
    (labelled as what it is, never RSS under a ``pss`` label)."""
    if sample is None:
        return request.metric, 0
    if request.metric == "pss" and sample.pss is not None:
        return "pss", sample.pss
    return "rss", sample.rss


def _gpu_now(sample: Optional[Sample]) -> str:
    return "" if sample is None or sample.gpu is None else f", GPU {gib(sample.gpu, 1)}"


def _variant(variant: Optional[str], repeat: int) -> str:
    """'fast r2 ' for a compare run, 'fast warm-up ' for its warm-up, '' for a ladder's probe."""
    return "" if not variant else f"{variant} r{repeat} " if repeat else f"{variant} warm-up "


def _who(request: ProbeRequest) -> str:
    """'[stress] bs=24', or '[compare] fast r2 bs=32' for a compare run (two slots interleave their lines)."""
    return f"[{request.phase}] {_variant(request.variant, request.repeat)}bs={request.batch_size}"


class LiveView:
    """Running probes, one row (or line) each, and messages between them."""

    def __init__(self, console: Optional[Console] = None):
        self.console = console or Console(stderr=True)
        self.interactive = self.console.is_terminal
        self.live: Optional[Live] = None
        self.rows: dict[Path, tuple[ProbeRequest, Optional[Sample], float]] = {}  # folder -> (request, sample, plain)

    def message(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, highlight=False, markup=False, soft_wrap=True)
        else:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def start(self, request: ProbeRequest) -> None:
        self.rows[request.folder] = (request, None, time.monotonic())
        if self.interactive:
            if self.live is None:
                self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
                self.live.start()
            else:
                self.live.update(self._render())
        else:
            self.message(f"{_who(request)}: starting ({request.folder})")

    def _render(self) -> Table:
        table = Table.grid(padding=(0, 1))
        for request, sample, _ in self.rows.values():
            label, used = _measured(request, sample)
            cap = "" if request.cap_bytes is None or sample is None or sample.cgroup is None else \
                f" cgroup {gib(sample.cgroup)} / cap {gib(request.cap_bytes)}"
            table.add_row(f"[bold]{_who(request).replace('[', '').replace(']', '')}[/]",
                          f"{0 if sample is None else sample.t:6.1f} s",
                          ProgressBar(total=request.rss_limit_bytes, completed=min(used, request.rss_limit_bytes),
                                      width=30),
                          f"{label} {gib(used)} / {gib(request.rss_limit_bytes)}{cap}{_gpu_now(sample)}",
                          f"procs {0 if sample is None else sample.n_procs}")
        return table

    def on_sample(self, request: ProbeRequest, sample: Sample) -> None:
        if request.folder not in self.rows or sample.n_procs == 0:  # the sample after the tree ended: nothing to show
            return
        _, _, plain = self.rows[request.folder]
        if self.live is not None:
            self.rows[request.folder] = (request, sample, plain)
            self.live.update(self._render())
        elif time.monotonic() - plain >= PLAIN_EVERY_S:
            self.rows[request.folder] = (request, sample, time.monotonic())
            label, used = _measured(request, sample)
            self.message(f"{_who(request)}: {sample.t:.0f} s, {label} {gib(used)}{_gpu_now(sample)}, "
                         f"{sample.n_procs} procs")

    def close(self) -> None:
        """Stop the live table (its rows are gone: the probes were abandoned), giving the terminal back."""
        self.rows = {}
        if self.live is not None:
            self.live.stop()
            self.live = None

    def finish(self, record: ProbeRecord, folder: Optional[Path] = None) -> None:
        self.rows = {k: v for k, v in self.rows.items() if k.name != record.folder and k != folder}
        if self.live is not None:
            if self.rows:
                self.live.update(self._render())
            else:
                self.live.stop()
                self.live = None
        rate = f", {record.metrics.samples_per_s:.1f} samples/s" if record.metrics.samples_per_s else ""
        variant = _variant(record.variant, record.repeat).rstrip()
        self.message(f"[{record.phase}{' ' + variant if variant else ''}] {probe_clause(record)} "
                     f"({record.duration_s:.1f} s{rate})")

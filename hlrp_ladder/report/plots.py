"""A ladder report's plots (matplotlib, written as PNG): every probe's memory over time, and the stress probes'
growth forecast."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional

from hlrp_ladder.probe.folder import MEMORY, RANKS
from hlrp_ladder.report.view import RunView
from hlrp_ladder.search.forecast import point_bytes
from hlrp_ladder.util.sizes import GIB, gib


def plot_memory(view: RunView, path: Path) -> Optional[Path]:
    """Every probe's sampled tree memory (solid), cgroup charge (dashed) and working set (dotted) over time,
    limits drawn. (pandas and matplotlib are imported here, where a report is made: other commands need not pay
    for them.)"""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    top = 0.0
    for rec in view.records:
        csv = view.store.root / rec.folder / MEMORY
        try:
            df = pd.read_csv(csv)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        if df.empty:
            continue
        label = f"{rec.phase} bs={rec.batch_size} ({rec.outcome.value})"
        line, = ax.plot(df["t"], df["rss"] / GIB, label=label, linewidth=1.4)
        top = max(top, float(df["rss"].max()) / GIB)
        if df["cgroup"].notna().any():
            ax.plot(df["t"], df["cgroup"] / GIB, linestyle="--", color=line.get_color(), linewidth=1.0)
        if df["working_set"].notna().any():
            ax.plot(df["t"], df["working_set"] / GIB, linestyle=":", color=line.get_color(), linewidth=1.0)
        if rec.peaks.ranks:  # a distributed rung: one thin line per rank (its processes' RSS)
            try:
                ranks = pd.read_csv(view.store.root / rec.folder / RANKS)
            except (OSError, ValueError, pd.errors.EmptyDataError):
                ranks = pd.DataFrame()
            styles = itertools.cycle(("-.", (0, (1, 1)), (0, (5, 1)), (0, (3, 1, 1, 1))))
            for (rank, rows), style in zip(ranks.groupby("rank") if not ranks.empty else [], styles):
                ax.plot(rows["t"], rows["rss"] / GIB, linestyle=style, color=line.get_color(), linewidth=0.8,
                        label=f"  bs={rec.batch_size} rank {rank}")
        if rec.outcome.value != "ok" and rec.peaks.kernel_bytes:
            # A kill can come between two samples: mark the kernel's exact peak where the probe ended.
            ax.plot([df["t"].iloc[-1]], [rec.peaks.kernel_bytes / GIB], marker="x", markersize=9,
                    color=line.get_color())
            top = max(top, rec.peaks.kernel_bytes / GIB)
    if top == 0:
        plt.close(fig)
        return None
    lim = view.records[-1].limits if view.records else None
    notes = []
    if lim and lim.cap_bytes:
        ax.axhline(lim.cap_bytes / GIB, color="black", linestyle=":", label=f"cap {gib(lim.cap_bytes)} (cgroup charge)")
    if lim and lim.rss_limit_bytes:
        if lim.rss_limit_bytes / GIB <= 1.6 * top:
            ax.axhline(lim.rss_limit_bytes / GIB, color="red", linestyle="-.",
                       label=f"soft limit {gib(lim.rss_limit_bytes)} ({lim.metric})")
        else:
            notes.append(f"soft limit {gib(lim.rss_limit_bytes)} ({lim.metric}) is above the chart")
    ax.set_xlabel("seconds since probe start")
    ax.set_ylabel("GiB  (solid: tree RSS, dashed: cgroup charge, dotted: working set)")
    ax.set_title(f"{view.title}" + (f"\n{'; '.join(notes)}" if notes else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_forecast(view: RunView, path: Path) -> Optional[Path]:
    """Memory at each validation end of every stress probe, and the fitted line extrapolated to the long run."""
    stressed = [r for r in view.records if r.forecast is not None and r.metrics.val_points]
    if not stressed:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    for rec in stressed:
        fc = rec.forecast
        every = view.spec.stress.check_interval if view.spec.stress else 1
        xs = [max(1, p.step // every) for p in rec.metrics.val_points]
        ys = [point_bytes(p, fc.domain) or 0 for p in rec.metrics.val_points]
        dots = ax.plot(xs, [y / GIB for y in ys], "o", label=f"bs={rec.batch_size} at validation ends ({fc.kind})")
        if fc.long_run_cycles and fc.predicted_peak_bytes is not None:
            # A straight line in cycles is a curve on the log axis: draw it through many points.
            start, end = xs[-1], max(xs[-1] + 1, fc.long_run_cycles)
            cycles = [start * (end / start) ** (i / 50) for i in range(51)]
            ax.plot(cycles, [(fc.observed_peak_bytes + fc.slope_mib_per_cycle * 2**20 * (c - start)) / GIB
                             for c in cycles], "--", color=dots[0].get_color(),
                    label=f"bs={rec.batch_size} extrapolated from its peak ({fc.slope_mib_per_cycle:+.0f} MiB/validation)")
    first = stressed[0].forecast
    if first.limit_bytes:
        ax.axhline(first.limit_bytes / GIB, color="black", linestyle=":", label=f"limit {gib(first.limit_bytes)}")
        if first.headroom_bytes:
            ax.axhline((first.limit_bytes - first.headroom_bytes) / GIB, color="grey", linestyle=":",
                       label=f"limit less headroom {gib(first.headroom_bytes)}")
    ax.set_xscale("log")
    ax.set_xlabel("validation cycle (log scale; the last one is the long run's end)")
    ax.set_ylabel(f"GiB ({first.domain})")
    ax.set_title(f"{view.title}: memory growth forecast", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

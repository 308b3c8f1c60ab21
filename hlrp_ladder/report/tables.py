"""A ladder report's tables (pandas): one row per probe, one row per stress forecast; and the terminal's table."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from hlrp_ladder.report.view import RunView
from hlrp_ladder.util.sizes import GIB, MIB

if TYPE_CHECKING:  # pandas is imported where a report is made: other commands need not pay ~0.15 s for it
    import pandas as pd


def _pct(part: Optional[int], whole: Optional[int]) -> Optional[float]:
    return None if not part or not whole else round(100.0 * part / whole, 1)


def _round(value: Optional[float], digits: int = 2) -> Optional[float]:
    return None if value is None else round(value, digits)


def frame(view: RunView, readable: bool = True) -> pd.DataFrame:
    """One row per probe. Columns: peaks in GiB (kernel = the cgroup's exact charged high-water mark; working
    set = the sampled peak of that charge less inactive file cache, what a cap judges; sampled = the monitor's
    max of the tree's RSS), % of the cap (kernel peak / cap) and of the soft limit (sampled / rss_limit),
    duration, rates, val loss."""
    import pandas as pd

    # host memory in the unit the sentences use: MiB when every figure is under 1 GiB (gib() writes "467 MiB"
    # there, and a table in GiB would show the same peak as 0.456)
    host = [v for r in view.records for v in (r.peaks.kernel_bytes, r.peaks.working_set_sampled_bytes,
                                              r.peaks.sampled_rss_bytes, r.peaks.sampled_pss_bytes) if v]
    # there, and a table in GiB would show the same peak as 0.456); ``readable`` False (csv): GiB always, its
    # columns the same for every run
    unit, name, digits = (MIB, "MiB", 0) if readable and host and max(host) < GIB else (GIB, "GiB", 3)
    size = lambda v: None if not v else (round(v / unit) if digits == 0 else round(v / unit, digits))  # noqa: E731
    rows = []
    for rec in view.records:
        sampled = rec.peaks.sampled_pss_bytes if rec.limits.metric == "pss" else rec.peaks.sampled_rss_bytes
        rows.append({
            "phase": rec.phase, "bs": rec.batch_size, "outcome": rec.outcome.value,
            f"kernel {name}": size(rec.peaks.kernel_bytes),
            **({f"working set {name}": size(rec.peaks.working_set_sampled_bytes)}
               if any(r.peaks.working_set_sampled_bytes is not None for r in view.records) else {}),
            f"sampled {rec.limits.metric} {name}": size(sampled),
            "% cap": _pct(rec.peaks.kernel_bytes, rec.limits.cap_bytes),
            **({"GPU GiB": None if rec.peaks.gpu_sampled_bytes is None else
                round(rec.peaks.gpu_sampled_bytes / GIB, 2)}
               if any(r.peaks.gpu_sampled_bytes is not None for r in view.records) else {}),
            "% soft": _pct(sampled, rec.limits.rss_limit_bytes),
            "s": round(rec.duration_s, 1),
            "step/s": _round(rec.metrics.step_per_s), "samples/s": _round(rec.metrics.samples_per_s),
            "val loss": _round(rec.metrics.val_loss, 4),
            "log": f"{rec.folder}/log.txt",
        })
    return pd.DataFrame(rows)


def _gib(n: Optional[int]) -> Optional[float]:
    return None if n is None else round(n / GIB, 3)


def forecast_frame(view: RunView) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for rec in view.records:
        fc = rec.forecast
        if fc is None:
            continue
        rows.append({
            "bs": rec.batch_size, "outcome": rec.outcome.value, "fit": fc.kind,
            "MiB/validation": fc.slope_mib_per_cycle, "raw MiB/validation": fc.raw_slope_mib_per_cycle,
            "r2": fc.r2, "points": fc.points_used, f"peak GiB ({fc.domain})": round(fc.observed_peak_bytes / GIB, 3),
            "long-run cycles": fc.long_run_cycles, "long-run steps": fc.long_run_steps,
            "predicted GiB, per validation": _gib(fc.predicted_per_validation_bytes),
            "predicted GiB, per step": _gib(fc.predicted_per_step_bytes), "judged": fc.model,
            "predicted GiB": _gib(fc.predicted_peak_bytes),
            "limit GiB": None if fc.limit_bytes is None else round(fc.limit_bytes / GIB, 3),
            # "fits" is judged against the limit less the headroom: show that number, not only the limit.
            "less headroom GiB": None if fc.limit_bytes is None else
            round((fc.limit_bytes - fc.headroom_bytes) / GIB, 3),
            "fits": fc.fits,
        })
    return pd.DataFrame(rows)


def rich_table(view: RunView):
    """The report's table for the terminal."""
    import pandas as pd

    from rich.table import Table

    df = frame(view)
    table = Table(title=f"{view.title}: pick {'bs=' + str(view.verdict.pick) if view.verdict.pick else 'none'}",
                  caption=view.verdict.reason, caption_justify="left")
    for column in df.columns:
        table.add_column(str(column), justify="left" if column in ("phase", "outcome", "log") else "right",
                         overflow="fold")
    for _, row in df.iterrows():
        table.add_row(*["-" if pd.isna(v) else str(v) for v in row.tolist()])
    return table


def ranks_frame(view: RunView) -> pd.DataFrame:
    """A distributed ladder's ranks: per probe, each rank's RSS (and GPU) peak and the imbalance (max / mean)."""
    rows = []
    for rec in view.records:
        if not rec.peaks.ranks:
            continue
        row = {"phase": str(rec.phase), "bs": rec.batch_size, "outcome": rec.outcome.value,
               "decided by": "-" if rec.evidence.rank is None else f"rank {rec.evidence.rank}"}
        for rank, peak in sorted(rec.peaks.ranks.items(), key=lambda item: int(item[0])):
            row[f"rank {rank} GiB"] = round(peak.rss_bytes / GIB, 3)
            if peak.gpu_bytes is not None:
                row[f"rank {rank} GPU GiB"] = round(peak.gpu_bytes / GIB, 2)
        row["imbalance"] = None if rec.peaks.imbalance is None else round(rec.peaks.imbalance, 2)
        rows.append(row)
    import pandas as pd

    return pd.DataFrame(rows)

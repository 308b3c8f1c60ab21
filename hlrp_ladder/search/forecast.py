"""Memory growth per validation cycle, and where it leads by the end of the long run. Pure functions.

The fit uses memory at each validation end. The first ``warmup`` cycles are left out (buffers still fill
there), the slope is Theil-Sen (the median of pairwise slopes: robust to a cycle that alternates high/low or
to one outlier), and growth is only called growth when it rises clearly above the points' own scatter;
otherwise the series is a plateau and extrapolates flat.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from itertools import combinations
from typing import Optional, Sequence

from hlrp_ladder.records import Forecast, ProbeRecord, ValPoint
from hlrp_ladder.search import stats
from hlrp_ladder.search.state import fit_peak, gpu_peak
from hlrp_ladder.util.sizes import gib

MIB = 2**20
MIN_GROWTH_BYTES = 8 * MIB  # over the observed window; below this a rise is noise at any scale we care about


@dataclass(frozen=True)
class Fit:
    kind: str                   # "plateau" | "growth" | "insufficient"
    slope_per_step: float       # bytes per training step (0 for a plateau)
    slope_per_cycle: float      # bytes per validation cycle of the probe
    r2: Optional[float]         # least-squares fit quality of the line on the points used
    scatter: float              # mean absolute residual around the Theil-Sen line, bytes
    points_used: int
    raw_slope_per_step: float   # Theil-Sen slope before the plateau test


def fit_growth(points: Sequence[tuple[int, int]], cycle_steps: int, warmup: int = 1) -> Fit:
    """``points`` are (step, bytes) at each validation end, in order."""
    pts = list(points)[warmup:] if len(points) - warmup >= 2 else list(points)
    if len(pts) < 2:
        return Fit("insufficient", 0.0, 0.0, None, 0.0, len(pts), 0.0)
    line = stats.theil_sen(pts)
    if line is None:  # every point at one step: no slope to speak of
        return Fit("insufficient", 0.0, 0.0, None, 0.0, len(pts), 0.0)
    slope = line.slope
    residuals = [y - (line.intercept + slope * x) for x, y in pts]
    # The mean (not the median) absolute residual: with 3-4 points a median ignores a cycle that swings.
    scatter = statistics.fmean(abs(r) for r in residuals)
    mean_y = statistics.fmean(y for _, y in pts)
    r2 = stats.r_squared(pts, line)
    rise = slope * (pts[-1][0] - pts[0][0])
    # Growth must be a trend and clearly larger than noise. From 6 points on: Mann-Kendall, one-sided p < 0.01,
    # and a rise above twice the scatter, 8 MiB and 1 % of the level. With 3-5 points no test reaches that, so
    # every pair must rise and the rise must pass 4x the scatter, 8 MiB and 5 % of the level. A false "growth"
    # extrapolated over hundreds of cycles rejects a good batch size, so the bar is high (rates in the tests).
    n = len(pts)
    slopes = [(y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in combinations(pts, 2) if x2 != x1]
    score = sum((s > 0) - (s < 0) for s in slopes)  # Mann-Kendall's S
    if n >= 6:
        trend = (score - 1) / math.sqrt(n * (n - 1) * (2 * n + 5) / 18) >= 2.326
        big = rise > max(2 * scatter, MIN_GROWTH_BYTES, 0.01 * mean_y)
    else:
        trend = score == len(slopes)
        big = rise > max(4 * scatter, MIN_GROWTH_BYTES, 0.05 * mean_y)
    growing = trend and big
    effective = slope if growing else 0.0
    return Fit("growth" if growing else "plateau", effective, effective * cycle_steps, r2, scatter, len(pts), slope)


def point_bytes(point: ValPoint, domain: str) -> Optional[int]:
    """A validation end's memory in the forecast's ``domain`` (rss | cgroup | working set | gpu)."""
    return {"rss": point.rss_bytes, "cgroup": point.cgroup_bytes, "working set": point.working_set_bytes,
            "gpu": point.gpu_bytes}[domain]


def assess(rec: ProbeRecord, *, cycle_steps: int, warmup: int, long_run_steps: Optional[int],
           long_run_interval: int, limit_bytes: Optional[int], limit_name: str, headroom_bytes: int,
           gpu: bool = False) -> Forecast:
    """A stress record's :class:`~hlrp_ladder.records.Forecast`: fit, both extrapolations, and whether it fits.
    ``gpu``: of the GPU memory on the tree's busiest device at each validation end, against the GPU limit.

    Only validation ends with a known memory reading count (see ``ValPoint.time_source``): a point whose time
    is unknown has no memory beside it, and too few known points make the forecast ``insufficient`` (never a
    plateau read from wrong samples)."""
    domain = "cgroup" if rec.limits.cap_bytes is not None and rec.peaks.kernel_bytes is not None else "rss"
    vals = rec.metrics.val_points
    if (domain == "cgroup" and rec.peaks.working_set_sampled_bytes is not None
            and all(p.working_set_bytes is not None for p in vals if p.cgroup_bytes is not None)):
        domain = "working set"  # as fit_peak judges: page cache (a log, a checkpoint written) is no leak
    if gpu:
        domain = "gpu"
    what = "GPU " if gpu else ""
    points = [(p.step, point_bytes(p, domain)) for p in vals]
    points = [(s, b) for s, b in points if b is not None]
    fit = fit_growth(points, cycle_steps, warmup)
    source = ""
    if gpu:
        # NVML shows what torch's caching allocator reserved, which stays flat while a leak fills the cache's
        # free blocks (measured on the H200: a 12 MiB-per-step leak, reserved flat at 11.04 GB over 40 steps,
        # allocated +60 MiB per validation). Where the trainer reports torch's allocated memory, its growth counts
        # too: once the cache is used up, reserved grows at least as fast.
        alloc = [(p.step, p.torch_allocated_bytes) for p in vals if p.torch_allocated_bytes is not None]
        inner = fit_growth(alloc, cycle_steps, warmup) if len(alloc) >= 2 else None
        if inner is not None and inner.kind == "growth" and (fit.kind != "growth"
                                                            or inner.slope_per_step > fit.slope_per_step):
            fit, source = inner, " of torch's allocated memory (the GPU's reserved memory hides it until torch's cache is used up)"
    peak = (gpu_peak(rec) or 0) if gpu else fit_peak(rec, "working set" if domain == "working set" else "charge")
    observed_steps = rec.metrics.last_step or 0
    out = Forecast(kind=fit.kind, domain=domain, slope_mib_per_cycle=round(fit.slope_per_cycle / MIB, 2),
                   slope_mib_per_step=round(fit.slope_per_step / MIB, 4),
                   raw_slope_mib_per_cycle=round(fit.raw_slope_per_step * cycle_steps / MIB, 2),
                   r2=None if fit.r2 is None else round(fit.r2, 3), points_used=fit.points_used,
                   observed_peak_bytes=peak, observed_steps=observed_steps,
                   observed_cycles=max(1, observed_steps // cycle_steps), limit_bytes=limit_bytes,
                   headroom_bytes=headroom_bytes)
    if fit.kind == "insufficient":
        unknown = len(vals) - len(points)
        why = f"{len(points)} validation end(s) with a known memory reading, at least 2 needed"
        if unknown:
            why += (f"; {unknown} of {len(vals)} had no known time (no sane \"time\" from the trainer and not seen "
                    f"while the probe ran)")
        elif not vals:
            why += ("; the probe reported no validation (metrics protocol val_end events, or "
                    "metrics_regex.val_loss for a trainer that does not speak it)")
        out.reason = f"{what}growth cannot be forecast: {why}"
        return out
    growth = (f"{what}+{out.slope_mib_per_cycle:.0f} MiB per validation{source}" if fit.kind == "growth" else
              f"{what}memory plateau (raw {out.raw_slope_mib_per_cycle:+.0f} MiB per validation is within the "
              f"scatter)")
    if long_run_steps is None:
        out.kind = "no_long_run"
        out.reason = f"{growth}; no overnight length to extrapolate to"
        return out
    cycles = max(1, long_run_steps // long_run_interval)
    per_validation = int(peak + max(0.0, fit.slope_per_cycle) * max(0, cycles - out.observed_cycles))
    per_step = int(peak + max(0.0, fit.slope_per_step) * max(0, long_run_steps - observed_steps))
    out.long_run_steps, out.long_run_cycles = long_run_steps, cycles
    out.predicted_per_validation_bytes, out.predicted_per_step_bytes = per_validation, per_step
    # Judge by the worse model; a tie reads as "per validation", the way the fit was measured.
    out.model = "per validation" if per_validation >= per_step else "per step"
    predicted = out.predicted_peak_bytes = max(per_validation, per_step)
    if out.model == "per validation":
        claim = f"{growth} -> {gib(predicted)} after {cycles} cycles"
        other = f"per step: {gib(per_step)} after {long_run_steps} steps"
    else:
        claim = (f"{what}+{out.slope_mib_per_step:.2f} MiB per step{source} -> {gib(predicted)} after "
                 f"{long_run_steps} steps")
        other = f"per validation: {gib(per_validation)} after {cycles} cycles"
    if limit_bytes is None:
        out.reason = claim
    else:
        budget = limit_bytes - headroom_bytes
        out.fits = predicted <= budget
        under = f"the {gib(limit_bytes)} {limit_name}" + (f" less {gib(headroom_bytes)} headroom" if headroom_bytes else "")
        out.reason = f"{claim} {'<=' if out.fits else '>'} {under}"
    if abs(per_validation - per_step) >= MIB:
        out.reason += f" ({other})"
    return out

"""Memory's shape in the batch size, learnt from the probes: peak = fixed + per_sample x bs. Pure.

The fit is a Theil-Sen line (the median of pairwise slopes: one noisy rung does not tilt it), judged by its
residuals. ``refine: model`` chooses the next rung from it; the report shows it with the throughput knee.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from itertools import combinations
from typing import Optional, Sequence

MIB = 2**20


@dataclass(frozen=True)
class LineFit:
    fixed: float           # bytes at bs = 0
    per_sample: float      # bytes per sample
    rms: float             # residual root mean square, bytes (0 with two points: a line fits any two)
    r2: Optional[float]
    points: int

    def predict(self, bs: float) -> float:
        return self.fixed + self.per_sample * bs

    def good(self, limit: int) -> bool:
        """Usable to choose rungs: memory grows with the batch size, and the points lie on the line (within 5 %
        of the limit, and R^2 >= 0.9 from three points on)."""
        if self.per_sample <= 0:
            return False
        if self.points < 3:
            return True
        return self.rms <= 0.05 * limit and (self.r2 is None or self.r2 >= 0.9)

    def margin(self, limit: int) -> float:
        """How far a prediction must clear the limit to be trusted: 3 residual RMS, at least 1 % of the limit."""
        return max(3 * self.rms, 0.01 * limit)

    def describe(self) -> str:
        return (f"{self.fixed / MIB:.0f} MiB + {self.per_sample / MIB:.1f} MiB per sample (from {self.points} rungs"
                + (f", residual {self.rms / MIB:.0f} MiB" if self.points > 2 else "") + ")")


def fit(points: Sequence[tuple[int, int]]) -> Optional[LineFit]:
    """(batch size, peak bytes) -> the line, or None with fewer than two distinct batch sizes."""
    pts = sorted(set(points))
    if len({x for x, _ in pts}) < 2:
        return None
    slopes = [(y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in combinations(pts, 2) if x2 != x1]
    slope = statistics.median(slopes)
    fixed = statistics.median(y - slope * x for x, y in pts)
    residuals = [y - (fixed + slope * x) for x, y in pts]
    rms = (sum(r * r for r in residuals) / len(pts)) ** 0.5
    mean = statistics.fmean(y for _, y in pts)
    total = sum((y - mean) ** 2 for _, y in pts)
    r2 = None if total == 0 else max(0.0, 1 - sum(r * r for r in residuals) / total)
    return LineFit(fixed, slope, rms, r2, len(pts))


def largest_fitting(line: LineFit, grid: Sequence[int], budget: int, margin: float) -> Optional[int]:
    """The largest grid size the line puts at least ``margin`` under ``budget``."""
    fitting = [bs for bs in grid if line.predict(bs) + margin <= budget]
    return max(fitting) if fitting else None


def knee(rates: Sequence[tuple[int, float]], gain: float = 0.05) -> Optional[int]:
    """The batch size after which samples/s stops growing (the next rung adds less than ``gain``): a bigger
    batch costs memory and buys no throughput past it."""
    pts = sorted((bs, r) for bs, r in rates if r)
    for (bs, rate), (_, nxt) in zip(pts, pts[1:]):
        if nxt < rate * (1 + gain):
            return bs
    return None

"""Memory's shape in the batch size, learnt from the probes: peak = fixed + per_sample x bs. Pure.

The fit is a Theil-Sen line (``stats.theil_sen``: the median of pairwise slopes, so one noisy rung does not tilt
it), judged by its residuals. ``refine: model`` chooses the next rung from it; the report shows it with the throughput knee.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from hlrp_ladder.search import stats

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

    def formula(self) -> str:
        """'712 MiB + 22.6 MiB per sample (from 5 rungs, residual 9 MiB)'."""
        return (f"{self.fixed / MIB:.0f} MiB + {self.per_sample / MIB:.1f} MiB per sample (from {self.points} rungs"
                + (f", residual {self.rms / MIB:.0f} MiB" if self.points > 2 else "") + ")")


def fit(points: Sequence[tuple[int, int]]) -> Optional[LineFit]:
    """(batch size, peak bytes) -> the line, or None with fewer than two distinct batch sizes."""
    pts = sorted(set(points))
    line = stats.theil_sen(pts)
    if line is None:
        return None
    return LineFit(line.intercept, line.slope, stats.residual_rms(pts, line), stats.r_squared(pts, line), len(pts))


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

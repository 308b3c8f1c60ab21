"""What a ladder report concludes beyond the verdict: the memory model (fixed + per sample, where it puts the
limit, whether the points fit a line) and the throughput knee."""
from __future__ import annotations

from typing import Optional

from hlrp_ladder.records import SEARCH_PHASES
from hlrp_ladder.report.view import RunView
from hlrp_ladder.search import memory_model
from hlrp_ladder.search.state import fit_peak
from hlrp_ladder.util.sizes import gib


def memory_fit(view: RunView) -> Optional[dict]:
    """peak = fixed + per sample x bs through the passing one-val probes (``memory_model``), where it would put
    the limit, and where throughput stops growing."""
    ok = {r.batch_size: r for r in view.records if r.phase in SEARCH_PHASES and r.outcome.value == "ok"}
    line = memory_model.fit([(bs, fit_peak(r)) for bs, r in ok.items()])
    if line is None:
        return None
    plan = view.plan
    budget = (plan.limit_bytes or 0) - plan.headroom_bytes
    largest = memory_model.largest_fitting(line, sorted(plan.batch_sizes), budget, line.margin(budget)) \
        if plan.limit_bytes else None
    beyond = int((budget - line.fixed) / line.per_sample) if line.per_sample > 0 and plan.limit_bytes else None
    knee = memory_model.knee([(bs, r.metrics.samples_per_s) for bs, r in ok.items() if r.metrics.samples_per_s])
    sentence = (f"Peak = {line.fixed / 2**20:.0f} MiB + {line.per_sample / 2**20:.1f} MiB per sample "
                f"(Theil-Sen through {line.points} passing one-val probes"
                + (f"; residual {line.rms / 2**20:.0f} MiB, R² {line.r2:.3f}" if line.points > 2 and line.r2 is not None
                   else "") + ")."
                + (f" It puts the {gib(budget)} limit at bs≈{beyond}: the largest grid size under it with the model's "
                   f"margin is bs={largest}." if beyond is not None and largest is not None else "")
                + ("" if not plan.limit_bytes or line.good(budget) else
                   " The points stray from the line (more than 5 % of the limit, or R² under 0.9): `refine: model` "
                   "would bisect here.")
                + (f" Throughput knee: samples/s grows less than 5 % past bs={knee} (a larger batch costs memory and "
                   f"buys little speed)." if knee is not None else ""))
    return {"fixed_mib": round(line.fixed / 2**20, 1), "mib_per_sample": round(line.per_sample / 2**20, 2),
            "points": line.points, "residual_mib": round(line.rms / 2**20, 1), "r2": line.r2,
            "limit_at_bs": beyond, "largest_grid_bs": largest, "throughput_knee_bs": knee, "sentence": sentence}

"""What a ladder report concludes beyond the verdict: the memory model of each memory a rung must fit in (host,
and the GPU where it was judged: fixed + per sample, where it puts the limit, whether the points fit a line) and
the throughput knee. A model never speaks past a failure the ladder saw: the limit it puts above the first
failing rung is said to be contradicted, and the largest grid size it names lies below that rung."""
from __future__ import annotations

from typing import Optional

from hlrp_ladder.records import SEARCH_PHASES, ProbeRecord
from hlrp_ladder.report.view import RunView
from hlrp_ladder.search import memory_model
from hlrp_ladder.search.state import failed_on, fit_peak, gpu_headroom, gpu_peak
from hlrp_ladder.search.words import probe_clause
from hlrp_ladder.util.sizes import gib


def _model(name: str, points: list[tuple[int, int]], limit: Optional[int], budget: int, grid: list[int],
           failure: Optional[ProbeRecord]) -> Optional[dict]:
    """One memory's model; ``failure`` is the ladder's first memory failure: the largest grid size named lies
    below it whichever memory it was, and only a failure of *this* memory contradicts this model."""
    line = memory_model.fit(points)
    if line is None:
        return None
    below = [bs for bs in grid if failure is None or bs < failure.batch_size]
    largest = memory_model.largest_fitting(line, below, budget, line.margin(budget)) if limit else None
    beyond = int((budget - line.fixed) / line.per_sample) if line.per_sample > 0 and limit else None
    label = "GPU peak" if name == "gpu" else "Peak"
    sentence = (f"{label} = {line.fixed / 2**20:.0f} MiB + {line.per_sample / 2**20:.1f} MiB per sample "
                f"(Theil-Sen through {line.points} passing one-val probes"
                + (f"; residual {line.rms / 2**20:.0f} MiB, R² {line.r2:.3f}" if line.points > 2 and line.r2 is not None
                   else "") + ").")
    limit_words = f"the {gib(budget)} {'GPU ' if name == 'gpu' else ''}limit"
    if beyond is not None and failure is not None and beyond >= failure.batch_size and failed_on(failure) == name:
        sentence += (f" It would put {limit_words} at bs≈{beyond}, but {probe_clause(failure)}: the model does not "
                     f"hold up there" + (f"; the largest grid size it puts under the limit below that failure is "
                                         f"bs={largest}." if largest is not None else "."))
    elif beyond is not None and largest is not None:
        first = ("" if failure is None or beyond < failure.batch_size else
                 f" below the failure at bs={failure.batch_size} ({'GPU' if failed_on(failure) == 'gpu' else 'host'} "
                 f"memory ran out first)")
        sentence += (f" It puts {limit_words} at bs≈{beyond}: the largest grid size under it with the model's "
                     f"margin{first} is bs={largest}.")
    if limit and not line.good(budget) and max(p for _, p in points) >= budget / 2:
        sentence += (" The points stray from the line (more than 5 % of the limit, or R² under 0.9): `refine: model` "
                     "would bisect here.")
    return {"fixed_mib": round(line.fixed / 2**20, 1), "mib_per_sample": round(line.per_sample / 2**20, 2),
            "points": line.points, "residual_mib": round(line.rms / 2**20, 1), "r2": line.r2,
            "limit_at_bs": beyond, "largest_grid_bs": largest, "sentence": sentence}


def memory_fit(view: RunView) -> Optional[dict]:
    """peak = fixed + per sample x bs through the passing one-val probes (``memory_model``), for host memory and,
    where it was judged, the GPU; where each would put its limit; and where throughput stops growing. The host
    model's fields stay at the top level (as before GPUs were judged); the GPU's are under ``gpu``."""
    search = [r for r in view.records if r.phase in SEARCH_PHASES]
    ok = {r.batch_size: r for r in search if r.outcome.value == "ok"}
    plan, grid = view.plan, sorted(view.plan.batch_sizes)
    failures = sorted((r for r in search if r.outcome.is_memory_verdict), key=lambda r: r.batch_size)
    first = failures[0] if failures else None
    budget = (plan.limit_bytes or 0) - plan.headroom_bytes
    host = _model("host", [(bs, fit_peak(r)) for bs, r in ok.items()], plan.limit_bytes, budget, grid, first)
    if host is None:
        return None
    gpu_ok = [r for r in ok.values() if r.limits.gpu_fit_bytes is not None and gpu_peak(r) is not None]
    gpu = None
    if gpu_ok:
        limit = min(r.limits.gpu_fit_bytes for r in gpu_ok)
        gpu = _model("gpu", [(r.batch_size, gpu_peak(r)) for r in gpu_ok], limit,
                     limit - max(gpu_headroom(plan, r) for r in gpu_ok), grid, first)
    knee = memory_model.knee([(bs, r.metrics.samples_per_s) for bs, r in ok.items() if r.metrics.samples_per_s])
    # The memory that binds first (the smaller largest grid size) is told first.
    models = [m for m in (gpu, host) if m is not None]
    if gpu is not None and first is not None and failed_on(first) == "host":
        models.reverse()
    elif gpu is not None and (host["largest_grid_bs"] or 0) < (gpu["largest_grid_bs"] or 0):
        models.reverse()
    sentence = " ".join(m["sentence"] for m in models)
    if knee is not None:
        sentence += (f" Throughput knee: samples/s grows less than 5 % past bs={knee} (a larger batch costs memory "
                     f"and buys little speed).")
    return {**{k: v for k, v in host.items() if k != "sentence"}, "throughput_knee_bs": knee, "sentence": sentence,
            "gpu": gpu}

"""Hand-written probe records for the pure tests (policy, schedule, forecast, SLURM states); named apart from
the package's hlrp_ladder/records.py, whose ProbeRecord they build."""
from hlrp_ladder.records import Evidence, Limits, Metrics, Outcome, Peaks, ProbeRecord, ValPoint

GIB = 2**30


def rec(bs: int, outcome: str = "ok", peak_gib: float = 1.0, phase: str = "ladder", t: float = 0.0,
        cap_gib: float | None = 2.0, vals: list[tuple[int, float]] | None = None, exit_code: int = 0,
        log_line: str | None = None, attempt: int = 1, repeat: int = 0, retry: int = 0,
        ws_gib: float | None = None, ws_vals: list[float] | None = None) -> ProbeRecord:
    """``ws_gib``: the working set's sampled peak; ``ws_vals``: the working set at each of ``vals``' points."""
    return ProbeRecord(
        batch_size=bs, phase=phase, repeat=repeat, retry=retry, attempt=attempt, folder=f"bs-{bs:04d}", outcome=Outcome(outcome),
        evidence=Evidence(exit_code=exit_code, log_line=log_line),
        peaks=Peaks(kernel_bytes=int(peak_gib * GIB), sampled_rss_bytes=int(peak_gib * GIB * 1.2),
                    vmhwm_bytes=int(peak_gib * GIB * 1.2),
                    working_set_sampled_bytes=None if ws_gib is None else int(ws_gib * GIB)),
        limits=Limits(rss_limit_bytes=20 * GIB, cap_bytes=None if cap_gib is None else int(cap_gib * GIB)),
        metrics=Metrics(last_step=max([s for s, _ in vals or []], default=35),
                        val_points=[ValPoint(step=s, time=s, rss_bytes=int(g * GIB * 1.2), cgroup_bytes=int(g * GIB),
                                             working_set_bytes=None if ws_vals is None else int(ws_vals[i] * GIB))
                                    for i, (s, g) in enumerate(vals or [])]),
        started_at=t or float(bs), ended_at=(t or float(bs)) + 10, argv=["x"])

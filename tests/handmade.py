"""Hand-written probe records for the pure tests (policy, schedule, forecast, SLURM states); named apart from
the package's hlrp_ladder/records.py, whose ProbeRecord they build."""
from hlrp_ladder.records import Evidence, Limits, Metrics, Outcome, Peaks, ProbeRecord, ValPoint

GIB = 2**30


def rec(bs: int, outcome: str = "ok", peak_gib: float = 1.0, phase: str = "ladder", t: float = 0.0,
        cap_gib: float | None = 2.0, vals: list[tuple[int, float]] | None = None, exit_code: int = 0,
        log_line: str | None = None, attempt: int = 1, repeat: int = 0, retry: int = 0,
        ws_gib: float | None = None, ws_vals: list[float] | None = None, gpu_gib: float | None = None,
        gpu_limit_gib: float | None = None, gpu_vals: list[float] | None = None, gpu_total_gib: float | None = None,
        gpu_cap_gib: float | None = None, mechanism: str = "") -> ProbeRecord:
    """``ws_gib``: the working set's sampled peak; ``ws_vals``: the working set at each of ``vals``' points.
    ``gpu_limit_gib`` set: the probe's GPU was judged, ``gpu_gib`` its peak on the busiest device (None: not
    read), ``gpu_vals`` the GPU memory at each of ``vals``' points."""
    gpu = lambda g: None if g is None else int(g * GIB)  # noqa: E731
    return ProbeRecord(
        batch_size=bs, phase=phase, repeat=repeat, retry=retry, attempt=attempt, folder=f"bs-{bs:04d}", outcome=Outcome(outcome),
        evidence=Evidence(exit_code=exit_code, log_line=log_line),
        peaks=Peaks(kernel_bytes=int(peak_gib * GIB), sampled_rss_bytes=int(peak_gib * GIB * 1.2),
                    vmhwm_bytes=int(peak_gib * GIB * 1.2),
                    working_set_sampled_bytes=None if ws_gib is None else int(ws_gib * GIB),
                    gpu_sampled_bytes=gpu(gpu_gib), gpu_source="nvml per process" if gpu_gib is not None else ""),
        limits=Limits(rss_limit_bytes=20 * GIB, cap_bytes=None if cap_gib is None else int(cap_gib * GIB),
                      gpu_limit_bytes=gpu(gpu_limit_gib), gpu_total_bytes=gpu(gpu_total_gib or gpu_cap_gib),
                      gpu_cap_bytes=gpu(gpu_cap_gib), gpu_cap_mechanism=mechanism),
        metrics=Metrics(last_step=max([s for s, _ in vals or []], default=35),
                        val_points=[ValPoint(step=s, time=s, rss_bytes=int(g * GIB * 1.2), cgroup_bytes=int(g * GIB),
                                             working_set_bytes=None if ws_vals is None else int(ws_vals[i] * GIB),
                                             gpu_bytes=None if gpu_vals is None else int(gpu_vals[i] * GIB))
                                    for i, (s, g) in enumerate(vals or [])]),
        started_at=t or float(bs), ended_at=(t or float(bs)) + 10, argv=["x"])

"""One clause on how a probe ended, with the number that matters — the words every verdict, live line and
report uses for a record. Where the probe's GPU was judged, the clause names the binding resource first: the
one nearest its limit (``bs=64 ok at 119.8 GiB GPU (host 1.46 GiB)``). Pure."""
from __future__ import annotations

from typing import Optional

from hlrp_ladder.records import SEARCH_PHASES, Outcome, ProbeRecord
from hlrp_ladder.search.state import failed_on, fit_peak, gpu_peak
from hlrp_ladder.util.sizes import gib


def _gpu(n: Optional[int]) -> str:
    return f"{gib(n, 1)} GPU"


def _under_cap(rec: ProbeRecord) -> str:
    lim = rec.limits
    if not lim.gpu_cap_bytes:
        return ""
    return f" under an emulated {gib(lim.gpu_cap_bytes, 1)} GPU ({lim.gpu_cap_mechanism or 'cap'})"


def gpu_binds(rec: ProbeRecord) -> bool:
    """The GPU is nearer its limit than host memory is to its own (so it is named first)."""
    gpu, gpu_limit = gpu_peak(rec), rec.limits.gpu_fit_bytes
    if gpu is None or not gpu_limit:
        return False
    host_limit = rec.limits.cap_bytes or rec.limits.rss_limit_bytes
    return not host_limit or gpu / gpu_limit >= fit_peak(rec) / host_limit


def probe_clause(rec: ProbeRecord) -> str:
    """One clause on how a probe ended, with the number that matters: 'bs=32 oom_killed at 2.10 GiB under ...'."""
    lim, ev = rec.limits, rec.evidence
    phase = "" if rec.phase in SEARCH_PHASES else f" {rec.phase}" + (f" {rec.repeat}" if rec.repeat else "")
    head = f"bs={rec.batch_size}{phase} {rec.outcome.value}"
    if rec.outcome in (Outcome.oom_killed, Outcome.child_oom):
        under = f" under a {gib(lim.cap_bytes)} cap" if lim.cap_bytes else " (host out of memory)"
        if ev.rank is None and ev.rank_note:  # a distributed rung whose killed rank cannot be told
            return f"{head} at {gib(rec.peak_bytes)}{under} (which rank cannot be told; {ev.rank_note})"
        if ev.rank is not None:  # a distributed rung: the rank that died, its memory, what became of the others
            rank = rec.peaks.ranks.get(str(ev.rank))
            of = f"rank {ev.rank}" + (f" of {ev.world_size}" if ev.world_size else "")
            at = f", {gib(rank.last_rss_bytes)}" if rank is not None and rank.last_rss_bytes else ""
            return f"{head} ({of}{at}{under.replace(' (', '; ').rstrip(')')}" + \
                (f"; {ev.rank_note})" if ev.rank_note else ")")
        return f"{head} at {gib(rec.peak_bytes)}{under}"
    if rec.outcome == Outcome.rss_breach and ev.rank is not None and str(ev.rank) in rec.peaks.ranks:
        rank = rec.peaks.ranks[str(ev.rank)]
        of = f"rank {ev.rank}" + (f" of {ev.world_size}" if ev.world_size else "")
        return f"{head} at {gib(rank.last_rss_bytes)} RSS of {of} over the {gib(lim.rss_limit_bytes)} per-rank soft limit"
    if rec.outcome == Outcome.rss_breach:
        sampled = rec.peaks.sampled_pss_bytes if lim.metric == "pss" else rec.peaks.sampled_rss_bytes
        return f"{head} at {gib(sampled)} {lim.metric.upper()} over the {gib(lim.rss_limit_bytes)} soft limit"
    if rec.outcome == Outcome.gpu_breach:
        return f"{head} at {_gpu(gpu_peak(rec))} over the {gib(lim.gpu_limit_bytes, 1)} GPU limit{_under_cap(rec)}"
    if rec.outcome == Outcome.forecast_oom:
        fc = rec.gpu_forecast if failed_on(rec) == "gpu" else rec.forecast
        if fc is not None:
            return f"{head}: {fc.reason}"
    if rec.outcome == Outcome.timeout:
        return f"{head} after {rec.duration_s:.0f} s"
    if rec.outcome in (Outcome.error, Outcome.cuda_oom) and ev.rank is not None and ev.rank_note:
        text = ev.log_line or ""
        line = f": {text[:97]}..." if len(text) > 100 else (f": {text}" if text else "")
        return (f"{head} (rank {ev.rank}{f' of {ev.world_size}' if ev.world_size else ''} ended first{line}; "
                f"{ev.rank_note})")
    if rec.outcome in (Outcome.error, Outcome.cuda_oom):
        text = ev.log_line or ""
        line = f": {text[:117]}..." if len(text) > 120 else (f": {text}" if text else "")
        at = ""
        if rec.outcome == Outcome.cuda_oom:
            seen = gpu_peak(rec)
            at = (f" at {_gpu(seen)}" if seen else " (GPU memory not read)" if rec.gpu_judged else "") + \
                _under_cap(rec)
        return f"{head}{at} (exit {ev.exit_code}{line})"
    if rec.outcome == Outcome.ok:
        host = gib(fit_peak(rec))
        if gpu_binds(rec):
            return f"bs={rec.batch_size}{phase} ok at {_gpu(gpu_peak(rec))} (host {host})"
        if rec.gpu_judged:
            seen = gpu_peak(rec)
            return f"bs={rec.batch_size}{phase} ok at {host} ({'GPU not read' if seen is None else _gpu(seen)})"
        return f"bs={rec.batch_size}{phase} ok at {host}"
    return head

"""One clause on how a probe ended, with the number that matters — the words every verdict, live line and
report uses for a record. Pure."""
from __future__ import annotations

from hlrp_ladder.records import SEARCH_PHASES, Outcome, ProbeRecord
from hlrp_ladder.search.state import fit_peak
from hlrp_ladder.util.sizes import gib


def probe_clause(rec: ProbeRecord) -> str:
    """One clause on how a probe ended, with the number that matters: 'bs=32 oom_killed at 2.10 GiB under ...'."""
    lim, ev = rec.limits, rec.evidence
    phase = "" if rec.phase in SEARCH_PHASES else f" {rec.phase}" + (f" {rec.repeat}" if rec.repeat else "")
    head = f"bs={rec.batch_size}{phase} {rec.outcome.value}"
    if rec.outcome in (Outcome.oom_killed, Outcome.child_oom):
        under = f" under a {gib(lim.cap_bytes)} cap" if lim.cap_bytes else " (host out of memory)"
        return f"{head} at {gib(rec.peak_bytes)}{under}"
    if rec.outcome == Outcome.rss_breach:
        sampled = rec.peaks.sampled_pss_bytes if lim.metric == "pss" else rec.peaks.sampled_rss_bytes
        return f"{head} at {gib(sampled)} {lim.metric.upper()} over the {gib(lim.rss_limit_bytes)} soft limit"
    if rec.outcome == Outcome.forecast_oom and rec.forecast is not None:
        return f"{head}: {rec.forecast.reason}"
    if rec.outcome == Outcome.timeout:
        return f"{head} after {rec.duration_s:.0f} s"
    if rec.outcome in (Outcome.error, Outcome.cuda_oom):
        text = ev.log_line or ""
        line = f": {text[:117]}..." if len(text) > 120 else (f": {text}" if text else "")
        return f"{head} (exit {ev.exit_code}{line})"
    if rec.outcome == Outcome.ok:
        return f"bs={rec.batch_size}{phase} ok at {gib(fit_peak(rec))}"
    return head

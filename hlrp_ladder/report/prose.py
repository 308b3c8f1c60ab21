"""A ladder report in markdown: where it ran, the pick and why, the limits, the table, the evidence of every
probe that failed, the memory model, the forecast and the long run."""
from __future__ import annotations

import time
from typing import Optional

from hlrp_ladder import overnight
from hlrp_ladder.report.analysis import memory_fit
from hlrp_ladder.report.tables import forecast_frame, frame, ranks_frame
from hlrp_ladder.report.view import RunView
from hlrp_ladder.search.words import probe_clause
from hlrp_ladder.util.sizes import gib


def _limits_text(view: RunView) -> str:
    lim = view.records[-1].limits if view.records else None
    if lim is None:
        return ""
    parts = [f"- soft limit: {gib(lim.rss_limit_bytes)} on the tree's summed {lim.metric.upper()} "
             f"(`memory.rss_limit: {view.spec.memory.rss_limit}`), sampled every {view.spec.memory.sample_interval_s} s; "
             f"crossing it kills the tree (`rss_breach`)."]
    if lim.cap_bytes:
        parts.append(f"- hard cap: {gib(lim.cap_bytes)} on memory charged to the probe's cgroup "
                     f"(`memory.cap: {view.spec.memory.cap}`, {lim.cgroup or 'NOT enforced: ' + lim.cgroup_note}); "
                     f"the kernel OOM-kills at it (`oom_killed`)." + (
                         " What must fit under it" + (", less the headroom," if view.plan.headroom_bytes else "") +
                         " is the *working set*: the charge less inactive "
                         "file cache, which the kernel takes back before it kills (the charged *kernel* peak counts "
                         "that cache too, and sits at the cap of a probe that merely read a lot)."
                         if any(r.peaks.working_set_sampled_bytes is not None for r in view.records) else ""))
    elif lim.cgroup_note:
        parts.append(f"- no cgroup: {lim.cgroup_note}; the kernel peak is the largest process's VmHWM.")
    parts.append("- RSS counts shared-library pages already in the page cache, which a cgroup does not charge: "
                 "the sampled RSS peak can exceed the kernel (cgroup) peak, and a cap is not an RSS limit.")
    parts += _gpu_limits(view)
    return "\n".join(parts)


def _gpu_limits(view: RunView) -> list[str]:
    """The GPU's limits as the probes' nodes resolved them, and how its memory was read (or why it was not)."""
    judged = [r for r in view.records if r.gpu_judged]
    if not judged:
        notes = {r.limits.gpu_note for r in view.records if r.limits.gpu_note}
        return [f"- GPU: {'; '.join(sorted(notes))}."] if notes else []
    lim, g = judged[-1].limits, view.spec.memory.gpu
    limit_text = f"`memory.gpu.limit: {g.limit}`" if g is not None else "the default 90 %"
    parts = [f"- GPU limit: {gib(lim.gpu_limit_bytes, 1)} per device ({limit_text} of "
             f"{'the emulated ' + gib(lim.gpu_cap_bytes, 1) + ' GPU' if lim.gpu_cap_bytes else gib(lim.gpu_total_bytes, 1)}"
             f"; devices: {', '.join(lim.gpu_devices)}), on the tree's GPU memory on its busiest device; crossing it "
             f"kills the tree (`gpu_breach`). Headroom at the pick: {view.plan.gpu_headroom or 'none'}. Read through "
             f"{', '.join(sorted({r.peaks.gpu_source for r in judged if r.peaks.gpu_source})) or 'NVML'}."]
    if lim.gpu_cap_bytes:
        parts.append(f"- emulated GPU: {gib(lim.gpu_cap_bytes, 1)} held by `{lim.gpu_cap_mechanism}`, covering "
                     f"{lim.gpu_cap_covers}.")
    return parts


def _warmup_text(view: RunView) -> str:
    warm = view.store.probe("warmup").record()
    if warm is None:
        return ""
    return (f" A warm-up probe of bs={warm.batch_size} came first, not counted ({warm.outcome.value}, "
            f"{warm.duration_s:.0f} s, {gib(warm.peak_bytes)}): the first probe on a cold page cache is charged the "
            f"libraries and data it reads in.")


def _host_text(host: Optional[dict]) -> str:
    """Where the ladder ran, as stored when it started (a report may be written anywhere)."""
    if not host:
        return "The run stored no host facts."
    if host.get("executor") == "slurm":
        cap = "the cap was each job's --mem" if host.get("cap_enforced") else "no cap"
        cgroup = "each probe a SLURM job, watched in its own cgroup"
    else:
        cap = {True: "the cap was enforced", False: f"the cap was NOT enforced ({host.get('cgroup_note')})",
               None: "no cap"}[host.get("cap_enforced")]
        cgroup = f"memory cgroup {host['cgroup']}" if host.get("cgroup") else "no writable memory cgroup"
    return (f"The ladder ran on {host.get('name')} ({host.get('cores')} cores, {gib(host.get('ram_bytes'), 1)} RAM, "
            f"{gib(host.get('usable_bytes'), 1)} usable; {cgroup}; {cap}).")


def markdown(view: RunView, png_name: Optional[str], report_command: str,
             forecast_png: Optional[str] = None) -> str:
    df = frame(view)
    state = view.state
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.get("created", 0)))
    head = "Inconclusive" if view.verdict.inconclusive else "Pick"
    lines = [
        f"# Ladder report: {view.spec.name} / {view.store.root.name}",
        "",
        f"Produced by `{' '.join(state.get('command') or ['hlrp-ladder', 'run', '?'])}` (started {created}, "
        f"status {state.get('status', '?')}) and `{report_command}`. {_host_text(state.get('host'))}"
        + _warmup_text(view),
        "",
        f"**{head}: {'bs=' + str(view.verdict.pick) if view.verdict.pick is not None else 'none'}** — "
        f"{view.verdict.reason.rstrip('.')}.",
        "",
        _limits_text(view),
        "",
        df.astype(object).where(df.notna(), None).to_markdown(index=False, missingval="-")
        if not df.empty else "_no finished probes_",
        "",
    ]
    not_ok = [r for r in view.records if r.outcome.value != "ok"]
    if not_ok:
        lines += ["## Evidence", ""]
        for rec in not_ok:
            ev = rec.evidence
            oom = "" if ev.oom_kills_after is None else \
                f"; oom_kill {ev.oom_kills_before} -> {ev.oom_kills_after} in {ev.oom_counter}"
            sig = f" ({ev.signal})" if ev.signal else ""
            log = f"; log: `{ev.log_line}`" if ev.log_line else ""
            sched = f"; {ev.scheduler}" if ev.scheduler else ""
            lines.append(f"- {probe_clause(rec)}: {ev.detail}. Exit {ev.exit_code}{sig}{oom}{sched}{log}")
        lines.append("")
    ranked = ranks_frame(view)
    if not ranked.empty:
        lines += ["## Ranks", "", "Each rank's peak RSS (its processes: those carrying its RANK) and GPU memory; "
                  "imbalance is the worst rank's RSS peak over the ranks' mean.", "",
                  ranked.astype(object).where(ranked.notna(), None).to_markdown(index=False, missingval="-"), ""]
    model = memory_fit(view)
    if model:
        lines += ["## Memory model", "", model["sentence"], ""]
    fdf = forecast_frame(view)
    if not fdf.empty:
        lines += ["## Forecast", "",
                  "Memory at each validation end of the stress probes (the first "
                  f"{view.spec.forecast.warmup_cycles} cycle(s) left out), Theil-Sen slope, extrapolated from the "
                  "probe's peak to the long run's end twice — growth per validation times the long run's "
                  "validations, growth per step times its steps — and judged by the worse. A plateau extrapolates "
                  "flat.", "",
                  fdf.astype(object).where(fdf.notna(), None).to_markdown(index=False, missingval="-"), ""]
        lines += [f"- bs={r.batch_size}: {r.forecast.reason}" for r in view.records if r.forecast is not None]
        lines.append("")
        if forecast_png:
            lines += [f"![memory growth forecast]({forecast_png})", ""]
    lines += _overnight_lines(view)
    if view.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in view.warnings] + [""]
    if png_name:
        lines += ["## Memory over time", "", f"![memory of every rung]({png_name})", ""]
    return "\n".join(lines)


def _overnight_lines(view: RunView) -> list[str]:
    if not overnight.folders(view.store):
        return []
    st = overnight.status_of(view.store)
    lines = ["## Overnight run", "", f"`{st['folder']}`: bs={st['batch_size']}, **{st['state']}**"]
    if st["state"] == "ended":
        lines[-1] += f" at {st['ended_at']} after {st['elapsed_s'] / 60:.1f} min: {st['summary']}."
        lines.append(f"Evidence: {st['evidence']['detail']} (exit {st['evidence']['exit_code']}).")
    else:
        lines[-1] += (f", {(st.get('elapsed_s') or 0) / 60:.1f} min in; memory {gib(st.get('rss_bytes'))} RSS now, "
                      f"{gib(st.get('peak_rss_bytes'))} at peak.")
    if st["metrics"]:
        lines.append(f"Last metrics: step {st['metrics'].get('step')}, val loss {st['metrics'].get('val_loss')}.")
    if st["forecast"]:
        lines.append(f"The ladder's forecast at this batch size: {st['forecast']['reason']}.")
    return lines + [""]

"""Records -> pandas -> markdown (tabulate) / JSON / CSV, and a PNG of every rung's memory over time."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from hlrp_ladder import forecast, policy
from hlrp_ladder.records import ProbeRecord
from hlrp_ladder.sizes import GIB, gib
from hlrp_ladder.spec import Spec
from hlrp_ladder.store import RunStore, atomic_write


@dataclass
class RunView:
    """Everything a report shows about one run."""
    store: RunStore
    state: dict
    spec: Spec
    records: list[ProbeRecord]
    warnings: list[str]
    verdict: policy.Verdict
    plan: policy.Plan

    @property
    def title(self) -> str:
        return f"{self.spec.name}-{self.store.root.name}"


def load_run(store: RunStore) -> RunView:
    spec = store.snapshot()
    loaded = store.load()
    records = sorted(loaded.records, key=lambda r: r.started_at)
    plan, warning = store.plan(spec)
    warnings = loaded.warnings + ([warning] if warning else [])
    return RunView(store, store.state(), spec, records, warnings, policy.verdict(plan, records), plan)


def _pct(part: Optional[int], whole: Optional[int]) -> Optional[float]:
    return None if not part or not whole else round(100.0 * part / whole, 1)


def _round(value: Optional[float], digits: int = 2) -> Optional[float]:
    return None if value is None else round(value, digits)


def frame(view: RunView) -> pd.DataFrame:
    """One row per probe. Columns: peaks in GiB (kernel = the cgroup's exact charged high-water mark; working
    set = the sampled peak of that charge less inactive file cache, what a cap judges; sampled = the monitor's
    max of the tree's RSS), % of the cap (kernel peak / cap) and of the soft limit (sampled / rss_limit),
    duration, rates, val loss."""
    rows = []
    for rec in view.records:
        sampled = rec.peaks.sampled_pss_bytes if rec.limits.metric == "pss" else rec.peaks.sampled_rss_bytes
        rows.append({
            "phase": rec.phase, "bs": rec.batch_size, "outcome": rec.outcome.value,
            "kernel GiB": None if rec.peaks.kernel_bytes is None else round(rec.peaks.kernel_bytes / GIB, 3),
            **({"working set GiB": None if rec.peaks.working_set_sampled_bytes is None else
                round(rec.peaks.working_set_sampled_bytes / GIB, 3)}
               if any(r.peaks.working_set_sampled_bytes is not None for r in view.records) else {}),
            f"sampled {rec.limits.metric} GiB": round(sampled / GIB, 3) if sampled else None,
            "% cap": _pct(rec.peaks.kernel_bytes, rec.limits.cap_bytes),
            **({"GPU GiB": round((rec.peaks.gpu_sampled_bytes or 0) / GIB, 2)}
               if any(r.peaks.gpu_sampled_bytes is not None for r in view.records) else {}),
            "% soft": _pct(sampled, rec.limits.rss_limit_bytes),
            "s": round(rec.duration_s, 1),
            "step/s": _round(rec.metrics.step_per_s), "samples/s": _round(rec.metrics.samples_per_s),
            "val loss": _round(rec.metrics.val_loss, 4),
            "log": f"{rec.folder}/log.txt",
        })
    return pd.DataFrame(rows)


def plot_memory(view: RunView, path: Path) -> Optional[Path]:
    """Every probe's sampled tree memory (solid), cgroup charge (dashed) and working set (dotted) over time,
    limits drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    top = 0.0
    for rec in view.records:
        csv = view.store.root / rec.folder / "memory.csv"
        try:
            df = pd.read_csv(csv)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        if df.empty:
            continue
        label = f"{rec.phase} bs={rec.batch_size} ({rec.outcome.value})"
        line, = ax.plot(df["t"], df["rss"] / GIB, label=label, linewidth=1.4)
        top = max(top, float(df["rss"].max()) / GIB)
        if df["cgroup"].notna().any():
            ax.plot(df["t"], df["cgroup"] / GIB, linestyle="--", color=line.get_color(), linewidth=1.0)
        if "working_set" in df and df["working_set"].notna().any():  # records older than the column lack it
            ax.plot(df["t"], df["working_set"] / GIB, linestyle=":", color=line.get_color(), linewidth=1.0)
        if rec.outcome.value != "ok" and rec.peaks.kernel_bytes:
            # A kill can come between two samples: mark the kernel's exact peak where the probe ended.
            ax.plot([df["t"].iloc[-1]], [rec.peaks.kernel_bytes / GIB], marker="x", markersize=9,
                    color=line.get_color())
            top = max(top, rec.peaks.kernel_bytes / GIB)
    if top == 0:
        plt.close(fig)
        return None
    lim = view.records[-1].limits if view.records else None
    notes = []
    if lim and lim.cap_bytes:
        ax.axhline(lim.cap_bytes / GIB, color="black", linestyle=":", label=f"cap {gib(lim.cap_bytes)} (cgroup charge)")
    if lim and lim.rss_limit_bytes:
        if lim.rss_limit_bytes / GIB <= 1.6 * top:
            ax.axhline(lim.rss_limit_bytes / GIB, color="red", linestyle="-.",
                       label=f"soft limit {gib(lim.rss_limit_bytes)} ({lim.metric})")
        else:
            notes.append(f"soft limit {gib(lim.rss_limit_bytes)} ({lim.metric}) is above the chart")
    ax.set_xlabel("seconds since probe start")
    ax.set_ylabel("GiB  (solid: tree RSS, dashed: cgroup charge, dotted: working set)")
    ax.set_title(f"{view.title}" + (f"\n{'; '.join(notes)}" if notes else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _gib(n: Optional[int]) -> Optional[float]:
    return None if n is None else round(n / GIB, 3)


def forecast_frame(view: RunView) -> pd.DataFrame:
    rows = []
    for rec in view.records:
        fc = rec.forecast
        if fc is None:
            continue
        rows.append({
            "bs": rec.batch_size, "outcome": rec.outcome.value, "fit": fc.kind,
            "MiB/validation": fc.slope_mib_per_cycle, "raw MiB/validation": fc.raw_slope_mib_per_cycle,
            "r2": fc.r2, "points": fc.points_used, f"peak GiB ({fc.domain})": round(fc.observed_peak_bytes / GIB, 3),
            "long-run cycles": fc.long_run_cycles, "long-run steps": fc.long_run_steps,
            "predicted GiB, per validation": _gib(fc.predicted_per_validation_bytes),
            "predicted GiB, per step": _gib(fc.predicted_per_step_bytes), "judged": fc.model,
            "predicted GiB": _gib(fc.predicted_peak_bytes),
            "limit GiB": None if fc.limit_bytes is None else round(fc.limit_bytes / GIB, 3),
            # "fits" is judged against the limit less the headroom: show that number, not only the limit.
            "less headroom GiB": None if fc.limit_bytes is None else
            round((fc.limit_bytes - fc.headroom_bytes) / GIB, 3),
            "fits": fc.fits,
        })
    return pd.DataFrame(rows)


def plot_forecast(view: RunView, path: Path) -> Optional[Path]:
    """Memory at each validation end of every stress probe, and the fitted line extrapolated to the long run."""
    stressed = [r for r in view.records if r.forecast is not None and r.metrics.val_points]
    if not stressed:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    for rec in stressed:
        fc = rec.forecast
        every = view.spec.stress.check_interval if view.spec.stress else 1
        xs = [max(1, p.step // every) for p in rec.metrics.val_points]
        ys = [forecast.point_bytes(p, fc.domain) or 0 for p in rec.metrics.val_points]
        dots = ax.plot(xs, [y / GIB for y in ys], "o", label=f"bs={rec.batch_size} at validation ends ({fc.kind})")
        if fc.long_run_cycles and fc.predicted_peak_bytes is not None:
            # A straight line in cycles is a curve on the log axis: draw it through many points.
            start, end = xs[-1], max(xs[-1] + 1, fc.long_run_cycles)
            cycles = [start * (end / start) ** (i / 50) for i in range(51)]
            ax.plot(cycles, [(fc.observed_peak_bytes + fc.slope_mib_per_cycle * 2**20 * (c - start)) / GIB
                             for c in cycles], "--", color=dots[0].get_color(),
                    label=f"bs={rec.batch_size} extrapolated from its peak ({fc.slope_mib_per_cycle:+.0f} MiB/validation)")
    first = stressed[0].forecast
    if first.limit_bytes:
        ax.axhline(first.limit_bytes / GIB, color="black", linestyle=":", label=f"limit {gib(first.limit_bytes)}")
        if first.headroom_bytes:
            ax.axhline((first.limit_bytes - first.headroom_bytes) / GIB, color="grey", linestyle=":",
                       label=f"limit less headroom {gib(first.headroom_bytes)}")
    ax.set_xscale("log")
    ax.set_xlabel("validation cycle (log scale; the last one is the long run's end)")
    ax.set_ylabel(f"GiB ({first.domain})")
    ax.set_title(f"{view.title}: memory growth forecast", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
                         if view.plan.peak_measure == "working set" and
                         any(r.peaks.working_set_sampled_bytes is not None for r in view.records) else ""))
    elif lim.cgroup_note:
        parts.append(f"- no cgroup: {lim.cgroup_note}; the kernel peak is the largest process's VmHWM.")
    parts.append("- RSS counts shared-library pages already in the page cache, which a cgroup does not charge: "
                 "the sampled RSS peak can exceed the kernel (cgroup) peak, and a cap is not an RSS limit.")
    return "\n".join(parts)


def memory_fit(view: RunView) -> Optional[dict]:
    """peak = fixed + per sample x bs through the passing one-val probes (``memory_model``), where it would put
    the limit, and where throughput stops growing."""
    from hlrp_ladder import memory_model

    ok = {r.batch_size: r for r in view.records if r.phase in policy.SEARCH_PHASES and r.outcome.value == "ok"}
    line = memory_model.fit([(bs, policy.fit_peak(r, view.plan.peak_measure)) for bs, r in ok.items()])
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


def _warmup_text(view: RunView) -> str:
    from hlrp_ladder.executors.core import read_record

    warm = read_record(view.store.root / "warmup")
    if warm is None:
        return ""
    return (f" A warm-up probe of bs={warm.batch_size} came first, not counted ({warm.outcome.value}, "
            f"{warm.duration_s:.0f} s, {gib(warm.peak_bytes)}): the first probe on a cold page cache is charged the "
            f"libraries and data it reads in.")


def _host_text(host: Optional[dict]) -> str:
    """Where the ladder ran, as stored when it started (a report may be written anywhere)."""
    if not host:
        return "The run stored no host facts (an older version)."
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
            lines.append(f"- {policy.describe(rec)}: {ev.detail}. Exit {ev.exit_code}{sig}{oom}{sched}{log}")
        lines.append("")
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
    from hlrp_ladder import overnight

    if not overnight.folders(view.store):
        return []
    st = overnight.status(view.store)
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


def as_json(view: RunView) -> str:
    from hlrp_ladder import overnight

    night = overnight.status(view.store) if overnight.folders(view.store) else None
    return json.dumps({
        "overnight": night,
        "name": view.spec.name, "run": str(view.store.root), "status": view.state.get("status"),
        "pick": view.verdict.pick, "reason": view.verdict.reason, "exit_code": view.verdict.exit_code,
        "confirmed_by": view.verdict.confirmed_by, "memory_model": memory_fit(view),
        "probes": [{**rec.model_dump(mode="json"), "duration_s": round(rec.duration_s, 3)} for rec in view.records],
        "warnings": view.warnings,
    }, indent=2)


def write(view: RunView, out_dir: Path, fmt: str, report_command: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path = out_dir / f"{view.title}.json"
        atomic_write(path, as_json(view) + "\n")
    elif fmt == "csv":
        path = out_dir / f"{view.title}.csv"
        atomic_write(path, frame(view).to_csv(index=False))
    else:
        png = plot_memory(view, out_dir / f"{view.title}-memory.png")
        fpng = plot_forecast(view, out_dir / f"{view.title}-forecast.png")
        path = out_dir / f"{view.title}.md"
        atomic_write(path, markdown(view, png.name if png else None, report_command, fpng.name if fpng else None))
    return path


def rich_table(view: RunView):
    """The report's table for the terminal."""
    from rich.table import Table

    df = frame(view)
    table = Table(title=f"{view.title}: pick {'bs=' + str(view.verdict.pick) if view.verdict.pick else 'none'}",
                  caption=view.verdict.reason, caption_justify="left")
    for column in df.columns:
        table.add_column(str(column), justify="left" if column in ("phase", "outcome", "log") else "right",
                         overflow="fold")
    for _, row in df.iterrows():
        table.add_row(*["-" if pd.isna(v) else str(v) for v in row.tolist()])
    return table

"""What happened to the long run: pending, running or ended (or lost), memory against the limit and the
ladder's forecast, the last metrics, and how it ended with its evidence."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from hlrp_ladder.overnight.control import handle_of
from hlrp_ladder.overnight.launch import LaunchError, folders
from hlrp_ladder.probe.folder import LOG, METRICS, RESULT, RUNNER, STATUS, SUBMITTED, ProbeFolder, read_json
from hlrp_ladder.probe.metrics import regex_patterns, regex_reading
from hlrp_ladder.records import Phase, ProbeRecord
from hlrp_ladder.run.store import RunStore
from hlrp_ladder.search.words import probe_clause
from hlrp_ladder.util.files import read_tail
from hlrp_ladder.util.sizes import gib


def status_of(store: RunStore) -> dict:
    """The latest long run of ``store`` as a dict (``status --json``)."""
    runs = folders(store)
    if not runs:
        raise LaunchError(f"{store.root}: no overnight run launched (hlrp-ladder launch-overnight {store.root} "
                          f"--pick stable)")
    folder = runs[-1]
    probe = ProbeFolder(folder)
    req = probe.request()
    runner, beat = read_json(folder / RUNNER) or {}, read_json(folder / STATUS) or {}
    submitted = read_json(folder / SUBMITTED) or {}
    out = {"folder": str(folder), "batch_size": req.batch_size, "executor": submitted.get("executor", "local"),
           "runner_pid": runner.get("pid"), "host": runner.get("host"), "tmux_session": runner.get("tmux_session"),
           "job_id": submitted.get("job_id"), "log": str(folder / LOG),
           "limits": {"rss_limit_bytes": req.rss_limit_bytes, "cap_bytes": req.cap_bytes, "metric": req.metric}}
    handle = handle_of(folder)
    state = handle.state() if handle is not None else ("ended" if (folder / RESULT).exists() else "lost")
    rec = None
    if state == "ended":  # its record, with the executor's evidence merged in (SLURM's state) the first time
        rec = handle.poll() if handle is not None else probe.record()
    if rec is not None:
        out.update(_ended(rec))
    elif state in ("running", "pending"):
        out.update(state=state, where=handle.where(),
                   elapsed_s=round(time.time() - runner["started_at"], 1) if runner.get("started_at") else None,
                   rss_bytes=beat.get("rss"), cgroup_bytes=beat.get("cgroup"), peak_rss_bytes=beat.get("peak_rss"),
                   peak_cgroup_bytes=beat.get("peak_cgroup"), n_procs=beat.get("n_procs"),
                   working_set_bytes=beat.get("working_set"), peak_working_set_bytes=beat.get("peak_working_set"),
                   heartbeat_age_s=round(time.time() - beat["time"], 1) if beat.get("time") else None,
                   ranks={str(r): {"rss_bytes": rss, "gpu_bytes": gpu} for r, (_, rss, gpu) in
                          sorted(probe.last_ranks().items())})
    else:
        out.update(state="lost", detail="its runner is gone and left no record (killed with SIGKILL, or the machine "
                                        "rebooted?); the last heartbeat is below",
                   rss_bytes=beat.get("rss"), peak_rss_bytes=beat.get("peak_rss"))
    out["metrics"] = _last_metrics(folder / METRICS) or _last_regex_metrics(folder / LOG, req)
    out["forecast"] = _ladder_forecast(store, req.batch_size)
    return out


def _ended(rec: ProbeRecord) -> dict:
    return dict(state="ended", outcome=rec.outcome.value, evidence=rec.evidence.model_dump(),
                ended_at=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.ended_at)),
                elapsed_s=round(rec.duration_s, 1), peak_bytes=rec.peak_bytes,
                peak_source=rec.peaks.kernel_source or "sampled", sampled_rss_peak_bytes=rec.peaks.sampled_rss_bytes,
                summary=probe_clause(rec),
                ranks={r: {"rss_bytes": p.rss_bytes, "gpu_bytes": p.gpu_bytes} for r, p in rec.peaks.ranks.items()})


def status_lines(st: dict) -> list[str]:
    """The status as a person reads it."""
    lim = st["limits"]
    limit = f"cap {gib(lim['cap_bytes'])}" if lim["cap_bytes"] else f"soft limit {gib(lim['rss_limit_bytes'])}"
    if st.get("job_id"):
        where = f"SLURM job {st['job_id']}" + (f" on {st['host']}" if st.get("host") else "")
    else:
        where = f"tmux {st['tmux_session']}" if st.get("tmux_session") else f"runner pid {st.get('runner_pid')}"
    lines = [f"{st['folder']}: bs={st['batch_size']}, {st['state'].upper()} ({where}), log {st['log']}"]
    if st["state"] == "ended":
        took = f"{st['elapsed_s'] / 60:.1f} min" if st["elapsed_s"] >= 120 else f"{st['elapsed_s']:.0f} s"
        ev = st["evidence"]
        lines += [f"ended {st['ended_at']} after {took}: {st['summary']}",
                  f"evidence: {ev['detail']}; exit {ev['exit_code']}" + (f" ({ev['signal']})" if ev["signal"] else "")
                  + (f"; oom_kill {ev['oom_kills_before']} -> {ev['oom_kills_after']}"
                     if ev["oom_kills_after"] is not None else "")
                  + (f"; {ev['scheduler']}" if ev.get("scheduler") else "")
                  + (f"; log: {ev['log_line']}" if ev["log_line"] else ""),
                  f"peak {gib(st['peak_bytes'])} ({st['peak_source']}) against the {limit}"]
    elif st["state"] == "pending":
        lines.append(f"waiting to start: {st['where']}")
    else:
        # Under a cap, the working set (what the ladder judged); the charge beside it, page cache included.
        ws = lim["cap_bytes"] and st.get("working_set_bytes") is not None
        now = st.get("working_set_bytes") if ws else st.get("cgroup_bytes") if lim["cap_bytes"] else st.get("rss_bytes")
        peak = (st.get("peak_working_set_bytes") if ws else
                st.get("peak_cgroup_bytes") if lim["cap_bytes"] else st.get("peak_rss_bytes"))
        elapsed = f"elapsed {st['elapsed_s'] / 60:.1f} min; " if st.get("elapsed_s") is not None else ""
        what = "working set" if ws else "memory"
        charged = f" (charged with page cache: {gib(st.get('cgroup_bytes'))} now)" if ws else ""
        age = st.get("heartbeat_age_s")
        beat = f" (heartbeat {age:.0f} s ago)" if age is not None else " (no heartbeat yet)"
        lines.append(f"{elapsed}{what} {gib(now)} now, {gib(peak)} at peak, against the {limit}{charged}{beat}")
        if st["state"] == "lost":
            lines.append(st["detail"])
    if st.get("ranks"):  # a distributed long run: each rank, now (running) or at its peak (ended)
        now = "now" if st["state"] != "ended" else "at peak"
        lines.append(f"ranks ({now}): " + ", ".join(
            f"rank {r} {gib(v['rss_bytes'])}" + (f" + {gib(v['gpu_bytes'])} GPU" if v.get("gpu_bytes") else "")
            for r, v in st["ranks"].items()))
    m = st["metrics"]
    if m:
        rate = m.get("samples_per_s")
        lines.append(f"last metrics: step {m.get('step')}, {rate if rate is None else round(rate, 1)} samples/s, "
                     f"val loss {m.get('val_loss')} (at step {m.get('val_step')})")
    if st["forecast"]:
        lines.append(f"ladder forecast at this batch size: {st['forecast']['reason']}")
    return lines


def _last_metrics(path: Path) -> dict:
    last: dict = {}
    for line in read_tail(path, 256 << 10)[-200:]:  # a long run's metrics file can be large: its end only
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("event") == "train":
            last.update(step=event.get("step"), samples_per_s=event.get("samples_per_s"),
                        step_per_s=event.get("step_per_s"))
        elif event.get("event") == "val_end":
            last.update(val_step=event.get("step"), val_loss=event.get("val_loss"))
        elif event.get("event") == "done":
            last.update(step=event.get("step"), artifact=event.get("artifact"))
    return last


def _last_regex_metrics(log: Path, request) -> dict:
    """A regex-read trainer's latest figures, from the end of its log (metrics_regex: named groups value, step;
    a step time becomes step/s, and samples/s at the run's batch size)."""
    patterns = regex_patterns(request.metrics_regex)
    last: dict = {}
    for line in read_tail(log, 256 << 10)[-2000:] if patterns else []:
        for name, pattern in patterns.items():
            found = regex_reading(pattern, line)
            if found is None:
                continue
            value, step = found
            if step is not None:
                last["step"] = step
            if name == "val_loss":
                last.update(val_loss=value, val_step=step)
            elif name in ("step_time_ms", "step_time_s") and value > 0:
                last["step_per_s"] = (1000 if name == "step_time_ms" else 1) / value
            else:
                last[name] = value
    if last.get("step_per_s") and "samples_per_s" not in last:
        last["samples_per_s"] = last["step_per_s"] * request.batch_size
    return last


def _ladder_forecast(store: RunStore, bs: int) -> Optional[dict]:
    for rec in store.load().records:
        if rec.batch_size == bs and rec.phase == Phase.stress and rec.forecast is not None:
            fc = rec.forecast
            return {"kind": fc.kind, "predicted_peak_bytes": fc.predicted_peak_bytes, "domain": fc.domain,
                    "slope_mib_per_cycle": fc.slope_mib_per_cycle, "reason": fc.reason}
    return None

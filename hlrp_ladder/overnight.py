"""The long run: launched detached with the pick, watched by the same monitor as the probes, and its status.

    runs/<name>/<run-id>/overnight/      (overnight-2/, ... for later launches)
      request.json   what to run: argv, env diff, limits (written before the start)
      monitor.json   the detached monitor: pid, start time, tmux session or log file
      status.json    a heartbeat every few seconds: elapsed, memory now and at peak
      argv.json log.txt memory.csv metrics.jsonl result.json   as in a probe folder

``python -m hlrp_ladder.overnight FOLDER`` is the detached monitor; it outlives the terminal and the
orchestrator, and the trainer dies with it (PR_SET_PDEATHSIG), so nothing runs unwatched.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil

from hlrp_ladder import policy
from hlrp_ladder.ladder import StopFlag, long_run_steps
from hlrp_ladder.probe.cgroup import safe_name
from hlrp_ladder.records import ProbeRecord, ProbeRequest
from hlrp_ladder.spec import Recipe, Spec, mask, mask_argv
from hlrp_ladder.store import RESULT, RunStore, StoreError, atomic_write, write_json

REQUEST, MONITOR, STATUS = "request.json", "monitor.json", "status.json"
HEARTBEAT_S = 5.0


class LaunchError(StoreError):
    """The long run cannot be launched as asked; the message is one line."""


# ---------------------------------------------------------------------------------------------------- folders
def folders(store: RunStore) -> list[Path]:
    found = [p for p in store.root.glob("overnight*") if p.is_dir() and (p / REQUEST).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]) if "-" in p.name else 1)


def _next_folder(store: RunStore) -> Path:
    n = len(folders(store)) + 1
    return store.root / ("overnight" if n == 1 else f"overnight-{n}")


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def monitor_alive(folder: Path) -> Optional[dict]:
    """The monitor's record if its process still runs (same pid and start time), else None."""
    info = _read(folder / MONITOR)
    if not info:
        return None
    try:
        proc = psutil.Process(info["pid"])
        if abs(proc.create_time() - info["create_time"]) < 1 and proc.status() != psutil.STATUS_ZOMBIE:
            return info
    except (psutil.Error, KeyError):
        pass
    return None


# ---------------------------------------------------------------------------------------------------- the request
def request_to_json(req: ProbeRequest) -> dict:
    """request.json: the request with its environment's secrets masked (the real values travel in ENV_FILE)."""
    data = req.model_dump(mode="json")
    data["env"] = mask(data["env"])
    return data


def request_from_json(data: dict) -> ProbeRequest:
    return ProbeRequest.model_validate(data)


ENV_FILE = ".env.json"   # the launcher's environment for the monitor: owner-only, read once and deleted


def write_env_file(folder: Path, env: dict[str, str]) -> Path:
    """Hand the monitor its environment through a file only the owner can read: on a command line (``tmux -e
    K=V``) every user of the machine could read a secret in /proc/*/cmdline."""
    path = folder / ENV_FILE
    atomic_write(path, json.dumps(env), private=True)
    return path


def load_env_file(folder: Path) -> None:
    """In the monitor: take the launcher's environment as its own, then delete the file."""
    path = folder / ENV_FILE
    try:
        env = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # started by hand: the environment it was started with is the one it has
    path.unlink(missing_ok=True)
    tmux = {k: v for k, v in os.environ.items() if k.startswith("TMUX")}  # the session it really runs in
    os.environ.clear()
    os.environ.update({**env, **tmux})


@dataclass
class Launch:
    batch_size: int
    max_steps: int
    request: ProbeRequest
    monitor_argv: list[str]
    tmux_session: Optional[str]          # None: a detached session with a log file
    note: str                            # where the steps count came from, what confirmed the pick


def _pick(spec: Spec, store: RunStore, records: list[ProbeRecord], pick: str, force: bool) -> tuple[int, str]:
    verdict = policy.verdict(store.plan(spec)[0], records)
    if pick != "stable":
        try:
            bs = int(pick)
        except ValueError:
            raise LaunchError(f"--pick {pick!r}: expected 'stable' or a batch size") from None
        tested = {r.batch_size for r in records if r.outcome.value == "ok"}
        if bs not in tested and not force:
            raise LaunchError(f"--pick {bs}: no probe of this run passed at bs={bs} (ok: {sorted(tested)}); "
                              f"--force launches it anyway")
        return bs, f"bs={bs} chosen by hand (the run's pick: {verdict.pick})"
    if verdict.inconclusive:
        raise LaunchError(f"this run is inconclusive ({verdict.reason}); there is no stable pick to launch — "
                          f"--pick <bs> launches a batch size you choose")
    if verdict.pick is None:
        raise LaunchError(f"this run has no pick ({verdict.reason}); finish or resume the ladder, or choose one "
                          f"with --pick <bs>")
    if spec.stress is not None and verdict.confirmed_by != "stress" and not force:
        raise LaunchError(f"the pick bs={verdict.pick} was not confirmed by the stress phase the spec asks for; "
                          f"resume the run, or --force to launch it anyway")
    return verdict.pick, f"the run's pick, confirmed by the {verdict.confirmed_by} phase"


def _steps(spec: Spec, records: list[ProbeRecord], bs: int) -> tuple[int, str]:
    night = spec.overnight
    if night.max_steps:
        return night.max_steps, f"overnight.max_steps={night.max_steps}"
    mine = sorted((r for r in records if r.batch_size == bs and r.metrics.step_per_s), key=lambda r: r.phase != "stress")
    if not mine:
        raise LaunchError(f"overnight.hours={night.hours} needs a measured step rate at bs={bs}, and no probe of "
                          f"this run at that batch size reported one; set overnight.max_steps instead")
    rate = mine[0].metrics.step_per_s
    return long_run_steps(spec, mine[0]), f"overnight.hours={night.hours} x {rate:.3f} step/s (from {mine[0].folder})"


def plan_launch(spec: Spec, store: RunStore, pick: str, force: bool) -> Launch:
    if spec.overnight is None:
        raise LaunchError("the spec has no overnight section (max_steps or hours, check_interval, ...)")
    records = store.load().records
    bs, why = _pick(spec, store, records, pick, force)
    plan = store.plan(spec)[0]
    steps, how = _steps(spec, records, bs)
    night = spec.overnight
    recipe = Recipe(max_steps=steps, check_interval=night.check_interval, limit_batches=night.limit_batches,
                    keys=spec.probe.keys)
    folder = _next_folder(store)
    # The long run gets the limits the ladder was judged by, and a gentle stop: SIGTERM, then
    # overnight.kill_grace_s to save a checkpoint and close its loggers, then SIGKILL.
    req = ProbeRequest(
        folder=folder.resolve(), batch_size=bs, phase="overnight", attempt=1,
        argv=spec.argv(bs, recipe, extra=night.overrides), env={**spec.env, **night.env}, cwd=os.getcwd(),
        rss_limit_bytes=plan.rss_limit_bytes, cap_bytes=plan.cap_bytes, metric=spec.memory.metric,
        interval_s=spec.memory.sample_interval_s, timeout_s=night.timeout_s, kill_grace_s=night.kill_grace_s,
        stop_grace_s=night.kill_grace_s, cgroup_name=safe_name(f"{spec.name}-{store.root.name}-{folder.name}"),
        probe_id=f"{spec.name}/{store.root.name}/{folder.name}/{uuid.uuid4().hex[:12]}",
        check_interval=night.check_interval, metrics_regex=spec.metrics_regex)
    session = None
    if shutil.which("tmux"):
        session = night.tmux_session or safe_name(f"hlrp-{spec.name}-{store.root.name}-{folder.name}")
    monitor = [sys.executable, "-m", "hlrp_ladder.overnight", str(folder.resolve())]
    return Launch(bs, steps, req, monitor, session, f"{why}; {steps} steps from {how}")


def describe_launch(launch: Launch) -> list[str]:
    req = launch.request
    lines = [f"bs={launch.batch_size}, {launch.max_steps} steps ({launch.note})",
             f"argv: {json.dumps(mask_argv(req.argv))}",
             f"env: {json.dumps(mask({**req.env, 'HLRP_LADDER_METRICS': str(req.folder / 'metrics.jsonl')}))}",
             f"log: {req.folder / 'log.txt'}   memory: {req.folder / 'memory.csv'}   record: {req.folder / RESULT}"]
    if launch.tmux_session:
        lines.append(f"starts in tmux session {launch.tmux_session!r} (tmux attach -t {launch.tmux_session})")
    else:
        lines.append(f"tmux not installed: starts as a detached session, monitor output in {req.folder / 'monitor.log'}")
    return lines


def live_runs(store: RunStore) -> list[Path]:
    return [folder for folder in folders(store) if monitor_alive(folder) is not None]


def refuse_if_live(store: RunStore, force: bool) -> None:
    """A second long run of the same ladder while one is alive is refused (naming it), unless --force."""
    if force:
        return
    for folder in folders(store):
        alive = monitor_alive(folder)
        if alive is None:
            continue
        tmux = f", tmux {alive['tmux_session']}" if alive.get("tmux_session") else ""
        raise LaunchError(f"an overnight run is alive: {folder} (bs={_read(folder / REQUEST)['batch_size']}, "
                          f"monitor pid {alive.get('pid')}{tmux}); hlrp-ladder status shows it, --force stops it "
                          f"and launches anew")


def launch(store: RunStore, plan: Launch, force: bool, wait_s: float = 15.0) -> dict:
    """Start the detached monitor (refusing, or with --force stopping, a live one) and wait until it runs."""
    refuse_if_live(store, force)
    for folder in live_runs(store):
        stop(folder)
    folder = plan.request.folder
    if plan.tmux_session and subprocess.run(["tmux", "has-session", "-t", f"={plan.tmux_session}"],
                                            capture_output=True).returncode == 0:
        raise LaunchError(f"tmux session {plan.tmux_session!r} exists already; set overnight.tmux_session")
    folder.mkdir(parents=True)
    write_json(folder / REQUEST, request_to_json(plan.request))
    # The launcher's environment, as the probes had it (a tmux server started earlier would otherwise give the
    # long run its own), with the spec's: through an owner-only file, never on a command line.
    write_env_file(folder, {**{k: v for k, v in os.environ.items() if not k.startswith("TMUX")},
                            **plan.request.env})
    if plan.tmux_session:
        # Several command arguments: tmux executes the monitor directly, without sh -c.
        subprocess.run(["tmux", "new-session", "-d", "-s", plan.tmux_session, "-c", plan.request.cwd,
                        "--", *plan.monitor_argv], check=True, capture_output=True)
    else:
        with open(folder / "monitor.log", "ab") as log:
            subprocess.Popen(plan.monitor_argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             cwd=plan.request.cwd, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        info = monitor_alive(folder)
        if (info is not None and (folder / "running.json").exists()) or (folder / RESULT).exists():
            return _read(folder / MONITOR) or {}
        time.sleep(0.05)
    raise LaunchError(f"the monitor did not start within {wait_s:g} s; see {folder / 'monitor.log'}")


def stop(folder: Path, margin_s: float = 30.0) -> None:
    """Stop a live long run: the monitor gives the trainer SIGTERM and its grace, then kills the tree and
    records it as interrupted. The monitor itself is killed only if it has not finished well after that."""
    info = monitor_alive(folder)
    if info is None:
        return
    grace = float((_read(folder / REQUEST) or {}).get("stop_grace_s") or 0)
    os.kill(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace + margin_s
    while monitor_alive(folder) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if monitor_alive(folder) is not None:
        os.kill(info["pid"], signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------- status
def status(store: RunStore) -> dict:
    """What happened to the long run: running or ended, memory against the limit and the forecast, metrics."""
    runs = folders(store)
    if not runs:
        raise LaunchError(f"{store.root}: no overnight run launched (hlrp-ladder launch-overnight {store.root})")
    folder = runs[-1]
    req = request_from_json(_read(folder / REQUEST))
    monitor, beat = _read(folder / MONITOR) or {}, _read(folder / STATUS) or {}
    result_path = folder / RESULT
    out = {"folder": str(folder), "batch_size": req.batch_size, "monitor_pid": monitor.get("pid"),
           "tmux_session": monitor.get("tmux_session"), "log": str(folder / "log.txt"),
           "limits": {"rss_limit_bytes": req.rss_limit_bytes, "cap_bytes": req.cap_bytes, "metric": req.metric}}
    if result_path.exists():
        rec = ProbeRecord.model_validate_json(result_path.read_text())
        out.update(state="ended", outcome=rec.outcome.value, evidence=rec.evidence.model_dump(),
                   ended_at=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.ended_at)),
                   elapsed_s=round(rec.duration_s, 1), peak_bytes=rec.peak_bytes,
                   peak_source=rec.peaks.kernel_source or "sampled", sampled_rss_peak_bytes=rec.peaks.sampled_rss_bytes,
                   summary=policy.describe(rec))
    elif monitor_alive(folder) is not None:
        out.update(state="running", elapsed_s=round(time.time() - monitor.get("started_at", time.time()), 1),
                   rss_bytes=beat.get("rss"), cgroup_bytes=beat.get("cgroup"), peak_rss_bytes=beat.get("peak_rss"),
                   peak_cgroup_bytes=beat.get("peak_cgroup"), n_procs=beat.get("n_procs"),
                   heartbeat_age_s=round(time.time() - beat["time"], 1) if beat.get("time") else None)
    else:
        out.update(state="lost", detail="the monitor is gone and left no record (was it killed with SIGKILL, or "
                                        "the machine rebooted?); the last heartbeat is below",
                   rss_bytes=beat.get("rss"), peak_rss_bytes=beat.get("peak_rss"))
    out["metrics"] = _last_metrics(folder / "metrics.jsonl")
    out["forecast"] = _ladder_forecast(store, req.batch_size)
    return out


def status_lines(st: dict) -> list[str]:
    """The status as a person reads it."""
    from hlrp_ladder.sizes import gib

    lim = st["limits"]
    limit = f"cap {gib(lim['cap_bytes'])}" if lim["cap_bytes"] else f"soft limit {gib(lim['rss_limit_bytes'])}"
    where = f"tmux {st['tmux_session']}" if st.get("tmux_session") else f"monitor pid {st.get('monitor_pid')}"
    lines = [f"{st['folder']}: bs={st['batch_size']}, {st['state'].upper()} ({where}), log {st['log']}"]
    if st["state"] == "ended":
        took = f"{st['elapsed_s'] / 60:.1f} min" if st["elapsed_s"] >= 120 else f"{st['elapsed_s']:.0f} s"
        ev = st["evidence"]
        lines += [f"ended {st['ended_at']} after {took}: {st['summary']}",
                  f"evidence: {ev['detail']}; exit {ev['exit_code']}" + (f" ({ev['signal']})" if ev["signal"] else "")
                  + (f"; oom_kill {ev['oom_kills_before']} -> {ev['oom_kills_after']}"
                     if ev["oom_kills_after"] is not None else "")
                  + (f"; log: {ev['log_line']}" if ev["log_line"] else ""),
                  f"peak {gib(st['peak_bytes'])} ({st['peak_source']}) against the {limit}"]
    else:
        now = st.get("cgroup_bytes") if lim["cap_bytes"] else st.get("rss_bytes")
        peak = st.get("peak_cgroup_bytes") if lim["cap_bytes"] else st.get("peak_rss_bytes")
        lines.append(f"elapsed {st.get('elapsed_s', 0) / 60:.1f} min; memory {gib(now)} now, {gib(peak)} at peak, "
                     f"against the {limit}")
        if st["state"] == "lost":
            lines.append(st["detail"])
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
    try:
        lines = path.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return last
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "train":
            last.update(step=event.get("step"), samples_per_s=event.get("samples_per_s"),
                        step_per_s=event.get("step_per_s"))
        elif event.get("event") == "val_end":
            last.update(val_step=event.get("step"), val_loss=event.get("val_loss"))
        elif event.get("event") == "done":
            last.update(step=event.get("step"), artifact=event.get("artifact"))
    return last


def _ladder_forecast(store: RunStore, bs: int) -> Optional[dict]:
    for rec in store.load().records:
        if rec.batch_size == bs and rec.phase == "stress" and rec.forecast is not None:
            fc = rec.forecast
            return {"kind": fc.kind, "predicted_peak_bytes": fc.predicted_peak_bytes, "domain": fc.domain,
                    "slope_mib_per_cycle": fc.slope_mib_per_cycle, "reason": fc.reason}
    return None


# ---------------------------------------------------------------------------------------------------- the monitor
def monitor_main(folder: Path) -> int:
    """The detached monitor: run the long run under the probe runner, with a heartbeat, until it ends."""
    from hlrp_ladder.executors.local import LocalExecutor

    load_env_file(folder)
    req = request_from_json(json.loads((folder / REQUEST).read_text()))
    me = psutil.Process()
    write_json(folder / MONITOR, {"pid": me.pid, "create_time": me.create_time(), "started_at": time.time(),
                                  "tmux_session": os.environ.get("TMUX") and _tmux_session_name(),
                                  "python": sys.executable})
    peak = {"rss": 0, "cgroup": 0, "last": 0.0}

    def heartbeat(request, sample) -> None:
        peak["rss"] = max(peak["rss"], sample.rss)
        peak["cgroup"] = max(peak["cgroup"], sample.cgroup or 0)
        now = time.monotonic()
        if now - peak["last"] >= HEARTBEAT_S:
            peak["last"] = now
            write_json(folder / STATUS, {"time": time.time(), "t": round(sample.t, 1), "rss": sample.rss,
                                         "cgroup": sample.cgroup, "peak_rss": peak["rss"],
                                         "peak_cgroup": peak["cgroup"] or None, "n_procs": sample.n_procs})
            print(f"{time.strftime('%H:%M:%S')} {sample.t / 60:6.1f} min  rss {sample.rss / 2**30:.2f} GiB  "
                  f"peak {peak['rss'] / 2**30:.2f} GiB  procs {sample.n_procs}", flush=True)

    print(f"hlrp-ladder overnight monitor {me.pid}: bs={req.batch_size}, log {folder / 'log.txt'}", flush=True)
    # SIGHUP too: killing the tmux session is a way to stop the long run, and it is recorded as such.
    with StopFlag((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as stop:
        rec = LocalExecutor().run(req, heartbeat, stop)
    print(f"ended: {policy.describe(rec)} — {rec.evidence.detail}", flush=True)
    return 0


def _tmux_session_name() -> Optional[str]:
    try:
        return subprocess.run(["tmux", "display-message", "-p", "#S"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


if __name__ == "__main__":
    sys.exit(monitor_main(Path(sys.argv[1])))

"""Verdicts you can trust, with real processes: a non-memory failure is no memory verdict, a forecast is never made
from readings taken at the wrong time, host-wide evidence is never blamed on a probe, resume kills only what is
surely its own, and nothing is left behind."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from hlrp_ladder.probe.runner import run_probe
from hlrp_ladder.probe import cgroup as cgroups
from hlrp_ladder.probe.cgroup import discovery as cgroup_discovery
from hlrp_ladder.probe import runner as runner_mod
from hlrp_ladder.records import MARKER_ENV, Outcome, ProbeRequest
from hlrp_ladder.probe.process import kill_leftovers
from tests.helpers import MEMHOG, alive_with, cli, memhog, running_pid, wait_for

pytestmark = pytest.mark.process

MIB = 2**20


def spec_file(tmp_path: Path, args, *, batch_sizes="[4, 8, 16]", extra="", cap=None, rss_limit="4GiB",
              probe="{max_steps: 20, check_interval: 10, limit_batches: 1}") -> Path:
    argv = [sys.executable, str(MEMHOG), "step_s=0.005", *args]
    cap_line = f", cap: {cap}" if cap else ""
    path = tmp_path / "v.yaml"
    path.write_text(f"name: v\ncommand: {json.dumps(argv)}\nbatch_sizes: {batch_sizes}\nprobe: {probe}\n"
                    f"memory: {{rss_limit: {rss_limit}{cap_line}, sample_interval_s: 0.05}}\n"
                    f"runs_dir: {tmp_path / 'runs'}\ntimeout_s: 60\n{extra}")
    return path


def the_run(tmp_path: Path) -> Path:
    return sorted((tmp_path / "runs" / "v").iterdir())[-1]


def request(tmp_path: Path, argv, name="p", cap=None, **kw) -> ProbeRequest:
    return ProbeRequest(folder=tmp_path / name, batch_size=8, phase="ladder", argv=argv, cwd=str(tmp_path),
                        rss_limit_bytes=4 << 30, cap_bytes=cap, interval_s=0.05, timeout_s=60, kill_grace_s=1,
                        cgroup_name=f"pytest-{os.getpid()}-{name}-{time.monotonic_ns()}", **kw)


# ---- 1. a failure that is not about memory -------------------------------------------------------------------
def test_a_non_memory_error_is_retried_ends_inconclusive_and_resume_after_the_fix_picks(tmp_path):
    flag = tmp_path / "broken"
    flag.touch()
    boom = "ValueError: batch_size must divide the number of action chunks"
    path = spec_file(tmp_path, ["base_mb=20", "mb_per_sample=1", f"fail_if_exists={flag}", "fail_bs=16",
                                f"message={boom}"])
    res = cli("run", str(path), cwd=tmp_path)
    assert res.returncode == 5, res.stderr
    assert (f"inconclusive — bs=16 error (exit 1: {boom}), on its retry too: not a memory verdict; bs=8 passed. "
            f"Fix the error and --resume, or launch-overnight --pick 8 to accept it") in res.stderr
    assert "pick:" not in res.stdout
    run = the_run(tmp_path)
    assert sorted(p.name for p in run.glob("bs-*")) == ["bs-0004", "bs-0008", "bs-0016", "bs-0016-retry1"]
    assert json.loads((run / "bs-0016-retry1" / "result.json").read_text())["retry"] == 1
    flag.unlink()  # the fix
    again = cli("run", str(path), "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "bs-0016: error; kept as bs-0016.error-1" in again.stderr
    assert "bs-0016-retry1: error; kept as bs-0016-retry1.error-1" in again.stderr
    assert "pick: bs=16" in again.stdout


# ---- 3. memory at a validation end, on the monitor's clock ----------------------------------------------------
FORECAST = dict(cap="300MiB", batch_sizes="[2, 4]",
                extra="stress: {max_steps: 400, check_interval: 50, limit_batches: 2}\n"
                      "overnight: {max_steps: 50000, check_interval: 50}\n")


@pytest.mark.parametrize("flavour", ["protocol without time", "regex only"])
def test_a_leak_per_validation_is_forecast_oom_without_trainer_timestamps(tmp_path, need_cgroup, flavour):
    # Every val point used to be read at t=0 (all equal): "memory plateau, fits" for a trainer leaking 6 MiB per
    # validation. Read live, each validation end gets the memory of the moment it was seen.
    args = ["base_mb=40", "mb_per_sample=5", "growth_mb_per_val=6", "step_s=0.01"]
    extra = FORECAST["extra"]
    if flavour == "protocol without time":
        args.append("notime=1")
    else:
        args.append("nometrics=1")
        extra += "metrics_regex: {val_loss: 'val step=\\d+ val_loss=([0-9.]+)', step_per_s: 'step_per_s=([0-9.]+)'}\n"
    path = spec_file(tmp_path, args, cap=FORECAST["cap"], batch_sizes=FORECAST["batch_sizes"], extra=extra,
                     probe="{max_steps: 35, check_interval: 30, limit_batches: 1}")
    res = cli("run", str(path), cwd=tmp_path, timeout=240)
    assert res.returncode == 3, res.stdout + res.stderr
    rec = json.loads((the_run(tmp_path) / "bs-0004-stress" / "result.json").read_text())
    assert rec["outcome"] == "forecast_oom", rec["forecast"]
    assert rec["metrics"]["source"] == ("jsonl" if flavour.startswith("protocol") else "regex")
    points = rec["metrics"]["val_points"]
    # timed when the monitor saw them; the last one may be seen only after the exit: then it has no reading
    assert len(points) == 8 and [p["time_source"] for p in points[:-1]] == ["seen"] * 7
    assert points[-1]["time_source"] in ("seen", "none")
    assert points[-2]["cgroup_bytes"] - points[1]["cgroup_bytes"] > 5 * 6 * MIB * 0.8  # it grows, read live
    fc = rec["forecast"]
    assert fc["kind"] == "growth" and 4 < fc["slope_mib_per_cycle"] < 8 and fc["fits"] is False


# ---- 5. no host-wide evidence blamed on a probe ----------------------------------------------------------------
def _capped_cgroup(limit_mb: int):
    cg, note = cgroups.create(f"pytest-bystander-{os.getpid()}-{time.monotonic_ns()}", limit_mb * MIB)
    assert cg is not None, note
    return cg


def test_without_a_cgroup_another_jobs_oom_kill_does_not_fail_an_ok_probe(tmp_path, need_cgroup, monkeypatch):
    bystander_cg = _capped_cgroup(60)
    try:
        monkeypatch.setattr(cgroup_discovery, "mounts", lambda: (None, None))  # the probe gets no cgroup of its own
        probe = request(tmp_path, memhog("base_mb=30", "steps=150", "step_s=0.02"))
        holder = {}
        thread = threading.Thread(target=lambda: holder.setdefault("rec", run_probe(probe)))
        thread.start()
        # the probe runs (its oom counter read, its process spawned) before the other job is killed
        wait_for(lambda: running_pid(tmp_path / "p" / "running.json"), 10, "the probe's running.json with a pid")
        # another user's job, in its own 60 MiB cgroup, runs out of memory while the probe runs
        victim = subprocess.Popen(memhog("base_mb=300", "steps=5"),
                                  preexec_fn=lambda: open(bystander_cg.procs_file, "w").write("0"))
        assert victim.wait(30) == -signal.SIGKILL
        thread.join(60)
        rec = holder["rec"]
        assert rec.outcome == Outcome.ok, rec.evidence
        assert rec.evidence.oom_counter == "/proc/vmstat (system-wide)"
        assert rec.evidence.oom_kills_after > rec.evidence.oom_kills_before
        assert "the host-wide oom_kill counter rose by" in rec.evidence.detail
        assert "the kernel log names no process of this tree" in rec.evidence.detail
    finally:
        bystander_cg.remove()


def test_without_a_cgroup_a_kill_of_the_tree_is_found_in_the_kernel_log(tmp_path, need_cgroup, monkeypatch):
    trap = _capped_cgroup(80)
    try:
        monkeypatch.setattr(cgroup_discovery, "mounts", lambda: (None, None))
        probe = request(tmp_path, memhog("start_delay_s=1.0", "base_mb=300", "steps=5"))
        holder = {}
        thread = threading.Thread(target=lambda: holder.setdefault("rec", run_probe(probe)))
        thread.start()
        pid = wait_for(lambda: running_pid(tmp_path / "p" / "running.json"), 10, "the probe's running.json with a pid")
        trap.procs_file.write_text(str(pid))  # before it allocates (start_delay_s)
        thread.join(60)
        rec = holder["rec"]
        assert rec.outcome == Outcome.oom_killed, rec.evidence
        assert "named in the kernel log" in rec.evidence.detail
    finally:
        trap.remove()


# ---- 10. resume kills only what is surely ours -----------------------------------------------------------------
def _sigkill_sent(pid: int) -> bool:
    """Whether ``pid`` has been sent SIGKILL: pending (/proc status SigPnd/ShdPnd), or already exiting
    (PF_EXITING in /proc stat's flags) or a zombie."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    pending = int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)
    flags = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[6])
    return bool(pending & (1 << (signal.SIGKILL - 1))) or bool(flags & 0x4) or status["State"].strip()[0] in "ZX"


def test_resume_kills_marked_processes_and_cgroup_members_not_a_reused_process_group(tmp_path):
    marker = f"pytest-{time.monotonic_ns()}"
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)          # its own group, no mark
    ours = subprocess.Popen(["sleep", "60"], start_new_session=True, env={**os.environ, MARKER_ENV: marker})
    try:
        # Until it has exec'd, the child shows the parent's environment (no marker): wait for the exec, as a
        # resume days later would find it (on a loaded machine the fork-to-exec gap failed this test once).
        wait_for(lambda: psutil.Process(ours.pid).environ().get(MARKER_ENV) == marker, 10, "the marked child's exec")
        running = tmp_path / "running.json"
        # a probe whose process group id, days later, is the stranger's; what carries its marker is ours
        running.write_text(json.dumps({"pid": 1, "pgid": stranger.pid, "create_time": 0, "cgroup": None,
                                       "marker": marker}))
        assert kill_leftovers(running) == 1
        assert ours.wait(5) == -signal.SIGKILL
        # the old rule (same group, started later) killed it; kill_leftovers signals before it returns, so a
        # SIGKILL sent to the stranger would show now: reaped, exiting, or pending
        assert stranger.poll() is None and not _sigkill_sent(stranger.pid)
    finally:
        for proc in (stranger, ours):
            proc.kill()
            proc.wait()


def test_a_crash_mid_probe_leaves_no_process_and_no_cgroup(tmp_path, need_cgroup, monkeypatch, marker):
    class Broken:
        def __init__(self, *a, **k):
            raise RuntimeError("the monitor broke")
    monkeypatch.setattr(runner_mod, "TreeSampler", Broken)
    req = request(tmp_path, memhog("hang=1", marker), cap=200 * MIB)
    with pytest.raises(RuntimeError):
        run_probe(req)
    info = json.loads((tmp_path / "p" / "running.json").read_text())
    assert info["cgroup"] and info["marker"]  # recorded before the spawn
    assert cgroups.find(info["cgroup"]) is None  # removed on the way out
    wait_for(lambda: not alive_with(marker), 5, f"no process carrying {marker}")


def test_run_sweeps_stale_empty_cgroups_of_dead_monitors(tmp_path, need_cgroup):
    v1, v2 = cgroups.mounts()
    parent = (v1 or v2) / cgroups.PARENT
    parent.mkdir(exist_ok=True)
    dead = parent / "crashed-probe.p999999"
    dead.mkdir()
    alive = parent / f"live-probe.p{os.getpid()}"  # a monitor still running (this test): left alone
    alive.mkdir()
    try:
        path = spec_file(tmp_path, ["base_mb=10"], batch_sizes="[1]")
        res = cli("run", str(path), cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert f"removed a stale probe cgroup: v{1 if v1 else 2} {dead}" in res.stderr
        assert not dead.exists() and alive.exists()
    finally:
        for folder in (dead, alive):
            if folder.exists():
                folder.rmdir()


# ---- 6. preflight blocks only what is certain ------------------------------------------------------------------
def test_a_guess_from_a_key_name_is_a_warning_and_a_bool_is_no_file(tmp_path):
    path = spec_file(tmp_path, ["base_mb=10"], batch_sizes="[1]",
                     extra="overrides: {'--always_save_checkpoint': 'False', 'init_from_checkpoint': /nope/x.pt}\n")
    res = cli("preflight", str(path), "--json")
    assert res.returncode == 0, res.stdout
    found = {f["check"]: f for f in json.loads(res.stdout)}
    assert "file --always_save_checkpoint" not in found
    assert found["file init_from_checkpoint"]["status"] == "warn"


# ---- 9. a report judges with the numbers the run used ----------------------------------------------------------
def test_the_plan_and_host_are_stored_and_the_report_judges_with_them(tmp_path):
    path = spec_file(tmp_path, ["base_mb=20", "mb_per_sample=2"], rss_limit="85%")
    assert cli("run", str(path), cwd=tmp_path).returncode == 0
    run = the_run(tmp_path)
    state = json.loads((run / "ladder.json").read_text())
    assert state["plan"]["rss_limit_bytes"] == int(psutil.virtual_memory().total * 0.85)
    assert state["host"]["cores"] == psutil.cpu_count() and state["host"]["ram_bytes"] > 0
    # as if the run had happened on a machine with a 60 MiB budget: a report written here must say what it said
    state["plan"].update(limit_bytes=60 * MIB, limit_name="soft limit", headroom_bytes=30 * MIB)
    state["host"]["name"] = "gpu-node-17"
    (run / "ladder.json").write_text(json.dumps(state))
    rep = cli("report", str(run), "--out", str(tmp_path / "rep"))
    assert rep.returncode == 0, rep.stderr
    md = next((tmp_path / "rep").glob("*.md")).read_text()
    assert "The ladder ran on gpu-node-17" in md
    assert "less than the 30 MiB headroom" in md  # judged against the stored 60 MiB, not 85 % of this machine

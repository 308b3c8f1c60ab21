"""The ladder end to end through the real CLI: picks, exit codes, resume after SIGKILL, Ctrl-C, corrupt records,
reports."""
import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers import MEMHOG, alive_with, cli, log_has, running_pid, wait_for

pytestmark = pytest.mark.process


def write_spec(tmp_path: Path, *, batch_sizes="[2, 4, 8, 16]", cap="250MiB", extra_args=(), steps=20,
               name="hog", rss_limit="4GiB") -> Path:
    argv = [sys.executable, str(MEMHOG), "base_mb=50", "mb_per_sample=20", "step_s=0.02", *extra_args]
    spec = tmp_path / f"{name}.yaml"
    cap_line = f"  cap: {cap}\n" if cap else ""
    spec.write_text(
        f"name: {name}\ncommand: {json.dumps(argv)}\nbatch_sizes: {batch_sizes}\n"
        f"probe: {{max_steps: {steps}, check_interval: 10, limit_batches: 1}}\n"
        f"memory:\n  rss_limit: {rss_limit}\n{cap_line}  sample_interval_s: 0.05\n"
        f"runs_dir: {tmp_path / 'runs'}\ntimeout_s: 60\n")
    return spec


def run_dir(tmp_path: Path, name="hog") -> Path:
    runs = sorted((tmp_path / "runs" / name).iterdir())
    return runs[-1]


def test_ladder_stops_at_the_first_kernel_oom_and_reports(tmp_path, need_cgroup):
    spec = write_spec(tmp_path)
    res = cli("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "pick: bs=8" in res.stdout
    assert "bs=16 oom_killed" in res.stdout
    run = run_dir(tmp_path)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "bs-0002", "bs-0004", "bs-0008", "bs-0016",
                                                      "ladder.json", "spec.yaml", "warmup"]
    warm = json.loads((run / "warmup" / "result.json").read_text())  # the first rung, a few steps, not counted
    assert warm["phase"] == "warmup" and warm["batch_size"] == 2 and warm["metrics"]["last_step"] == 5
    assert "warm-up (bs=2, not counted): ok" in res.stderr
    state = json.loads((run / "ladder.json").read_text())
    cap = state["plan"]["cap_bytes"]
    assert json.loads((run / "warmup" / "request.json").read_text())["cap_bytes"] == 2 * cap  # room for the cache
    assert json.loads((run / "bs-0002" / "request.json").read_text())["cap_bytes"] == cap
    assert state["status"] == "done" and state["pick"] == 8

    rep = cli("report", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "reports"), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "reports" / f"hog-{run.name}.md").read_text()
    assert "**Pick: bs=8** — bs=8: highest ok rung; bs=16 oom_killed at" in md
    assert f"hog-{run.name}-memory.png" in md and (tmp_path / "reports" / f"hog-{run.name}-memory.png").stat().st_size > 10_000
    assert "| ladder  |   16 | oom_killed |" in md
    js = json.loads(cli("report", str(run), "--format", "json", "--out", str(tmp_path / "reports")).stdout)
    assert js["pick"] == 8 and [p["outcome"] for p in js["probes"]] == ["ok", "ok", "ok", "oom_killed"]
    assert js["probes"][-1]["evidence"]["oom_kills_after"] >= 1 and js["probes"][-1]["phase"] == "ladder"
    csv = cli("report", str(run), "--format", "csv", "--out", str(tmp_path / "reports")).stdout
    assert csv.splitlines()[0].startswith("phase,bs,outcome,kernel GiB")  # csv: GiB always, its columns stable
    assert "| phase   |   bs | outcome    |   kernel MiB |" in md  # the markdown: MiB under 1 GiB, as its sentences


def test_first_rung_failing_exits_3(tmp_path):
    spec = write_spec(tmp_path, cap=None, rss_limit="60MiB")
    res = cli("run", str(spec), cwd=tmp_path)
    assert res.returncode == 3
    assert "no stable rung: bs=2 rss_breach" in res.stderr


def test_bad_spec_exits_2(tmp_path):
    spec = tmp_path / "x.yaml"
    spec.write_text("name: x\nbatch_sizes: [4]\nmemory: {rss_limit: lots}\n")
    res = cli("run", str(spec), cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == f"error: {spec}:3: memory.rss_limit: 'lots' is not a " \
                                                         f"size (e.g. '28GiB', '900MiB' or '85%')"


def _running_probe(tmp_path, folder):
    """running.json once the probe's process exists (it is first written before the spawn, without a pid)."""
    def find():
        return next((path for path in (tmp_path / "runs" / "hog").glob(f"*/{folder}/running.json")
                     if running_pid(path)), None)
    return wait_for(find, 30, f"{folder}'s running.json with a pid")


def _start(spec, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "hlrp_ladder", "run", str(spec)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_of_the_orchestrator_leaves_no_probe_and_resume_finishes(tmp_path, need_cgroup, marker):
    spec = write_spec(tmp_path, extra_args=["workers=1", "worker_mb=10", marker], steps=150)
    orchestrator = _start(spec, tmp_path)
    running = _running_probe(tmp_path, "bs-0004")
    probe_pid = running_pid(running)
    wait_for(lambda: log_has(running.parent / "log.txt", "holding"), 30, "bs-0004's worker forked ('holding')")
    orchestrator.send_signal(signal.SIGKILL)
    orchestrator.wait()
    # The main probe process dies with the orchestrator (PR_SET_PDEATHSIG) ...
    wait_for(lambda: not psutil.pid_exists(probe_pid) or psutil.Process(probe_pid).status() == "zombie", 5,
             f"the probe's process {probe_pid} gone")
    # ... and its forked worker holds no more than a few MiB until resume clears it.
    assert len(alive_with(marker)) == 1, alive_with(marker)
    res = cli("run", str(spec), "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "bs-0004: unfinished; kept as bs-0004.unfinished-1" in res.stderr
    assert "resume: bs=2 ok" in res.stderr
    assert "pick: bs=8" in res.stdout
    assert not alive_with(marker)
    run = run_dir(tmp_path)
    assert (run / "bs-0004" / "result.json").exists() and (run / "bs-0004.unfinished-1" / "log.txt").exists()
    assert json.loads((run / "bs-0004" / "result.json").read_text())["attempt"] == 2


def test_ctrl_c_kills_the_tree_records_interrupted_and_exits_130(tmp_path, marker):
    spec = write_spec(tmp_path, cap=None, extra_args=["workers=2", marker], steps=400)
    orchestrator = _start(spec, tmp_path)
    log = _running_probe(tmp_path, "bs-0002").parent / "log.txt"
    # the whole tree is up: the trainer prints "holding" once its two workers are forked
    wait_for(lambda: log_has(log, "holding"), 30, f"'holding' in {log}")
    assert len(alive_with(marker)) == 3, alive_with(marker)
    orchestrator.send_signal(signal.SIGINT)
    _, stderr = orchestrator.communicate(timeout=30)
    assert orchestrator.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not alive_with(marker)
    record = json.loads((run_dir(tmp_path) / "bs-0002" / "result.json").read_text())
    assert record["outcome"] == "interrupted"
    assert json.loads((run_dir(tmp_path) / "ladder.json").read_text())["status"] == "interrupted"


def test_corrupt_record_is_reported_and_rerun_on_resume(tmp_path, need_cgroup):
    spec = write_spec(tmp_path)
    assert cli("run", str(spec), cwd=tmp_path).returncode == 0
    run = run_dir(tmp_path)
    result = run / "bs-0004" / "result.json"
    result.write_text(result.read_text()[:100])  # truncated, as a full disk would leave it
    rep = cli("report", str(run), "--out", str(tmp_path / "reports"))
    assert rep.returncode == 0
    assert f"{result}: corrupt record" in rep.stderr
    res = cli("run", str(spec), "--resume", str(run), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "bs-0004: corrupt; kept as bs-0004.corrupt-1" in res.stderr
    assert json.loads(result.read_text())["outcome"] == "ok"


def test_resume_refuses_a_changed_spec(tmp_path, need_cgroup):
    spec = write_spec(tmp_path, batch_sizes="[2]")
    assert cli("run", str(spec), cwd=tmp_path).returncode == 0
    write_spec(tmp_path, batch_sizes="[2, 4]")
    res = cli("run", str(spec), "--resume", cwd=tmp_path)
    assert res.returncode == 2 and "the spec changed since this run started" in res.stderr


def test_report_without_runs_is_one_line(tmp_path):
    res = cli("report", "--runs-dir", str(tmp_path / "none"))
    assert res.returncode == 2 and res.stderr.startswith("error: no runs under")

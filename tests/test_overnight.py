"""launch-overnight and status with real detached processes: they outlive the launching command."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import MEMHOG, alive_with, cli, log_has, running_pid, wait_for

pytestmark = pytest.mark.process


def ladder(tmp_path: Path, *, overnight: str, cap: str = "", extra_args=(), stress: str = "",
           command=None) -> Path:
    argv = command or [sys.executable, str(MEMHOG), "base_mb=30", "mb_per_sample=5", "step_s=0.01", *extra_args]
    cap_line = f"  cap: {cap}\n" if cap else ""
    spec = tmp_path / "n.yaml"
    spec.write_text(f"name: night\ncommand: {json.dumps(argv)}\nbatch_sizes: [2, 4]\n"
                    f"probe: {{max_steps: 20, check_interval: 10, limit_batches: 1}}\n{stress}"
                    f"memory:\n  rss_limit: 4GiB\n{cap_line}  sample_interval_s: 0.05\n"
                    f"overnight: {overnight}\nruns_dir: {tmp_path / 'runs'}\n")
    res = cli("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return spec


def status(tmp_path: Path, env=None) -> dict:
    res = cli("status", "--runs-dir", str(tmp_path / "runs"), "--json", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def wait_state(tmp_path: Path, state: str, timeout=60.0, env=None, until=lambda st: True) -> dict:
    """`status --json` once the long run is in ``state`` (and ``until(status)`` holds), polled with a deadline."""
    return wait_for(lambda: (lambda st: st if st["state"] == state and until(st) else None)(status(tmp_path, env)),
                    timeout, f"the long run {state}", every=0.3)


def trainer_up(st: dict, marker: str, text: str = "holding") -> int:
    """The long run's trainer pid, once it has exec'd (its command line carries ``marker``) and printed ``text``
    to its log.txt ("holding": its memory is allocated and, with term_save_s, its SIGTERM handler installed)."""
    folder = Path(st["folder"])
    pid = wait_for(lambda: running_pid(folder / "running.json"), 30, f"{folder}/running.json with a pid")
    wait_for(lambda: any(p.pid == pid for p in alive_with(marker)), 30, f"the trainer {pid} carrying {marker}")
    wait_for(lambda: log_has(folder / "log.txt", text), 30, f"{text!r} in {folder}/log.txt")
    return pid


def no_tmux_env() -> dict:
    """PATH without tmux: the detached-session fallback."""
    bin_dir = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{bin_dir}:/nonexistent"}


@pytest.fixture
def tmux_cleanup():
    """Ends the tmux sessions these tests started (named after the spec, 'night'), and no other."""
    yield
    if shutil.which("tmux"):
        names = subprocess.run(["tmux", "ls", "-F", "#S"], capture_output=True, text=True).stdout.split()
        for name in names:
            if name.startswith("hlrp-night-"):
                subprocess.run(["tmux", "kill-session", "-t", f"={name}"], capture_output=True)


@pytest.mark.parametrize("with_tmux", [True, False], ids=["tmux", "no-tmux"])
def test_launch_outlives_the_command_and_status_follows_it(tmp_path, with_tmux, tmux_cleanup, marker):
    if with_tmux and not shutil.which("tmux"):
        pytest.fail("tmux is part of the set-up (make setup installs it); it is missing here")
    env = None if with_tmux else no_tmux_env()
    ladder(tmp_path, overnight="{max_steps: 300, check_interval: 100, limit_batches: 1}", extra_args=[marker])
    res = cli("launch-overnight", "--pick", "stable", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    assert ("tmux attach -t" in res.stdout) == with_tmux
    # the launching command has exited without waiting for the long run, which goes on without it
    st = wait_state(tmp_path, "running", env=env)
    assert st["batch_size"] == 4 and psutil.pid_exists(st["runner_pid"])
    assert (st["tmux_session"] is not None) == with_tmux
    st = wait_state(tmp_path, "ended", env=env)
    assert st["outcome"] == "ok" and st["metrics"]["step"] == 300 and st["metrics"]["val_loss"] is not None
    folder = Path(st["folder"])
    assert {"argv.json", "log.txt", "memory.csv", "metrics.jsonl", "result.json", "request.json",
            "submitted.json", "runner.json"} <= {p.name for p in folder.iterdir()}


def test_dry_run_starts_nothing(tmp_path, marker):
    ladder(tmp_path, overnight="{max_steps: 300}", extra_args=[marker])
    res = cli("launch-overnight", "--pick", "stable", "--dry-run", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "dry run: nothing started" in res.stdout
    assert '"training.max_steps=300"' in res.stdout and '"data.loader.batch_size=4"' in res.stdout
    assert "HLRP_LADDER_METRICS" in res.stdout and "log.txt" in res.stdout
    run = next((tmp_path / "runs" / "night").iterdir())
    # a launch writes the long run's folder (request.json, submitted.json) before it starts anything, and
    # returns only once its running.json is there: no folder, and nothing of the ladder's left running
    assert not list(run.glob("overnight*"))
    assert not alive_with(marker)


def test_second_launch_is_refused_while_one_is_alive_and_force_replaces_it(tmp_path, tmux_cleanup, marker):
    ladder(tmp_path, overnight="{max_steps: 100000, check_interval: 1000, limit_batches: 1}", extra_args=[marker])
    runs = str(tmp_path / "runs")
    none = cli("status", "--runs-dir", runs, cwd=tmp_path)   # before any launch: how to launch one, --pick included
    assert none.returncode == 2 and "no overnight run launched (hlrp-ladder launch-overnight" in none.stderr and \
        "--pick stable)" in none.stderr
    assert cli("launch-overnight", "--pick", "stable", "--runs-dir", runs, cwd=tmp_path).returncode == 0
    first = wait_state(tmp_path, "running")
    again = cli("launch-overnight", "--pick", "stable", "--runs-dir", runs, cwd=tmp_path)
    assert again.returncode == 2 and again.stdout == ""  # one line, not the plan first
    assert again.stderr.startswith(f"error: an overnight run is alive: {first['folder']} (bs=4, pid "
                                   f"{first['runner_pid']}")
    forced = cli("launch-overnight", "--pick", "stable", "--force", "--runs-dir", runs, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    old = json.loads((Path(first["folder"]) / "result.json").read_text())
    assert old["outcome"] == "interrupted"
    st = wait_state(tmp_path, "running")
    assert st["folder"].endswith("overnight-2")
    subprocess.run(["kill", str(st["runner_pid"])])
    assert wait_state(tmp_path, "ended")["outcome"] == "interrupted"


def test_status_of_a_capped_long_run_shows_its_working_set_and_its_charge(tmp_path, need_cgroup, tmux_cleanup,
                                                                           marker):
    ladder(tmp_path, overnight="{max_steps: 100000, check_interval: 1000, limit_batches: 1}", cap="200MiB",
           extra_args=[marker])
    runs = str(tmp_path / "runs")
    assert cli("launch-overnight", "--pick", "stable", "--runs-dir", runs, cwd=tmp_path).returncode == 0
    st = wait_state(tmp_path, "running", until=lambda st: st.get("working_set_bytes") is not None)  # a heartbeat
    assert 0 < st["working_set_bytes"] <= st["cgroup_bytes"] and st["peak_working_set_bytes"] >= st["working_set_bytes"]
    human = cli("status", "--runs-dir", runs, cwd=tmp_path).stdout
    assert "working set " in human and " at peak, against the " in human and "(charged with page cache: " in human
    subprocess.run(["kill", str(st["runner_pid"])])
    assert wait_state(tmp_path, "ended")["outcome"] == "interrupted"


def test_long_run_oom_killed_under_the_cap_is_reported_as_such(tmp_path, need_cgroup, tmux_cleanup, marker):
    # one-val probes fit under 150 MiB; the long run keeps 20 MiB more per validation until the kernel kills it
    ladder(tmp_path, overnight="{max_steps: 2000, check_interval: 20, limit_batches: 1}", cap="150MiB",
           extra_args=["growth_mb_per_val=20", marker])
    assert cli("launch-overnight", "--pick", "stable", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path).returncode == 0
    st = wait_state(tmp_path, "ended", timeout=90)
    assert st["outcome"] == "oom_killed", st
    assert st["evidence"]["exit_code"] == 137 and st["evidence"]["oom_kills_after"] >= 1
    human = cli("status", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path).stdout
    assert "ENDED" in human and "bs=4 overnight oom_killed at 150 MiB under a 150 MiB cap" in human
    assert "evidence: the kernel OOM-killed the main process; exit 137 (SIGKILL); oom_kill 0 -> 1" in human


def _stress_spec(tmp_path: Path, stress: str, args=(), rss_limit="4GiB") -> Path:
    spec = tmp_path / "n.yaml"
    argv = [sys.executable, str(MEMHOG), "base_mb=30", "step_s=0.01", *args]
    spec.write_text(f"name: night\ncommand: {json.dumps(argv)}\nbatch_sizes: [2]\n"
                    f"probe: {{max_steps: 10, check_interval: 5, limit_batches: 1}}\n"
                    f"stress: {stress}\nmemory: {{rss_limit: {rss_limit}}}\n"
                    f"overnight: {{max_steps: 100}}\nruns_dir: {tmp_path / 'runs'}\n")
    return spec


def test_refuses_without_a_stress_confirmed_pick(tmp_path):
    # the stress probe breaches the soft limit (4 validations x 40 MiB kept): a memory verdict, no pick at all
    spec = _stress_spec(tmp_path, "{max_steps: 20, check_interval: 5, limit_batches: 1}",
                        ["growth_mb_per_val=40"], rss_limit="150MiB")
    res = cli("run", str(spec), cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    res = cli("launch-overnight", "--pick", "stable", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert res.returncode == 2 and "this run has no pick (no stable rung:" in res.stderr
    forced = cli("launch-overnight", "--pick", "stable", "--force", "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    assert forced.returncode == 2  # nothing to launch: --pick <bs> is the way
    by_hand = cli("launch-overnight", "--pick", "2", "--dry-run", "--runs-dir", str(tmp_path / "runs"))
    assert by_hand.returncode == 0 and "bs=2 chosen by hand" in by_hand.stdout


def test_an_inconclusive_run_is_refused_for_stable_and_said_everywhere(tmp_path):
    # the stress probe times out, on its retry too: not a memory verdict, so no pick and exit 5
    spec = _stress_spec(tmp_path, "{max_steps: 20, check_interval: 5, limit_batches: 1, timeout_s: 0.05}")
    res = cli("run", str(spec), cwd=tmp_path)
    assert res.returncode == 5, res.stderr
    assert "inconclusive — bs=2 stress timeout after 0 s, on its retry too: not a memory verdict" in res.stderr
    runs = str(tmp_path / "runs")
    run = next((tmp_path / "runs" / "night").iterdir())
    assert {p.name for p in run.iterdir()} >= {"bs-0002", "bs-0002-stress", "bs-0002-stress-retry1"}
    assert json.loads((run / "ladder.json").read_text())["status"] == "inconclusive"
    assert " inconclusive " in cli("runs", "--runs-dir", runs).stdout
    stable = cli("launch-overnight", "--pick", "stable", "--force", "--dry-run", "--runs-dir", runs)
    assert stable.returncode == 2 and stable.stderr.startswith("error: this run is inconclusive (bs=2 stress timeout")
    assert cli("launch-overnight", "--pick", "2", "--dry-run", "--runs-dir", runs).returncode == 0
    rep = cli("report", "--runs-dir", runs, "--out", str(tmp_path / "reports"))
    assert rep.returncode == 0, rep.stderr
    md = next((tmp_path / "reports").glob("*.md")).read_text()
    assert "**Inconclusive: none** — bs=2 stress timeout" in md and "status inconclusive" in md


@pytest.mark.trainer
def test_reference_trainer_overnight_for_a_few_steps(tmp_path, tiny_data, tmux_cleanup):
    command = [sys.executable, "-m", "trainer.train", f"paths.data_dir={tiny_data}",
               f"logging.runs_dir={tmp_path / 'truns'}", "data.adapter.tf.image_size=32",
               "data.adapter.tf.shuffle_buffer=50", "training.metrics_every_n_steps=2"]
    spec = tmp_path / "n.yaml"
    spec.write_text(f"name: night\ncommand: {json.dumps(command)}\nbatch_sizes: [2]\n"
                    f"probe: {{max_steps: 4, check_interval: 2, limit_batches: 1}}\n"
                    f"overnight: {{max_steps: 8, check_interval: 4, limit_batches: 1}}\nruns_dir: {tmp_path / 'runs'}\n")
    assert cli("run", str(spec), cwd=tmp_path, timeout=300).returncode == 0
    assert cli("launch-overnight", "--pick", "stable", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path).returncode == 0
    st = wait_state(tmp_path, "ended", timeout=180)
    assert st["outcome"] == "ok" and st["metrics"]["step"] == 8
    assert Path(st["metrics"]["artifact"]).name == "smolvla_shared_stage2_artifact.pt"
    assert Path(st["metrics"]["artifact"]).is_file()


# ---- secrets and permissions --------------------------------------------------------------------------------------
def test_no_secret_on_any_command_line_or_record_and_records_follow_the_umask(tmp_path, tmux_cleanup, marker):
    if not shutil.which("tmux"):
        pytest.fail("tmux is part of the set-up (make setup installs it); it is missing here")
    secret = f"s3cr3t-{time.monotonic_ns()}"
    env = {**os.environ, "WANDB_API_KEY": secret}
    spec = ladder(tmp_path, overnight="{max_steps: 2000, check_interval: 100, limit_batches: 1, "
                                      "overrides: {logging.wandb_api_key: x}}", extra_args=[marker])
    old = os.umask(0o027)
    try:
        res = cli("launch-overnight", "--pick", "stable", "--spec", str(spec), "--runs-dir", str(tmp_path / "runs"),
                  cwd=tmp_path, env=env)
    finally:
        os.umask(old)
    assert res.returncode == 0, res.stderr
    st = wait_state(tmp_path, "running")
    folder = Path(st["folder"])
    trainer_up(st, marker)  # the trainer's command line is there to be read
    for proc in psutil.process_iter(["cmdline"]):  # what every user of the machine can read
        assert secret not in " ".join(proc.info["cmdline"] or []), proc.info["cmdline"]
    monitor = psutil.Process(st["runner_pid"])
    assert monitor.environ().get("WANDB_API_KEY") == secret  # ... yet the long run has it
    assert not (folder / ".env.json").exists()  # read once by the monitor, then deleted
    for record in folder.iterdir():
        if record.is_file():
            assert secret not in record.read_text(errors="replace"), record
    # team-readable as the umask says (027 -> 0640), not mkstemp's 0600
    assert (folder / "request.json").stat().st_mode & 0o777 == 0o640
    assert (folder.parent / "ladder.json").stat().st_mode & 0o777 == 0o644  # written under the default umask
    subprocess.run(["kill", str(st["runner_pid"])])
    wait_state(tmp_path, "ended")


def test_a_masked_overnight_override_is_not_launched_as_stars(tmp_path):
    spec = ladder(tmp_path, overnight="{max_steps: 100, overrides: {logging.wandb_api_key: abc}}")
    res = cli("launch-overnight", "--pick", "stable", "--dry-run", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert res.returncode == 2
    assert "overnight.overrides.logging.wandb_api_key masked in the snapshot; pass the spec with --spec" in res.stderr
    ok = cli("launch-overnight", "--pick", "stable", "--dry-run", "--spec", str(spec), "--runs-dir",
             str(tmp_path / "runs"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


# ---- stopping a long run gently ------------------------------------------------------------------------------------
def test_killing_the_tmux_session_gives_the_long_run_its_grace_to_save(tmp_path, tmux_cleanup, marker):
    if not shutil.which("tmux"):
        pytest.fail("tmux is part of the set-up (make setup installs it); it is missing here")
    ladder(tmp_path, overnight="{max_steps: 100000, check_interval: 1000, limit_batches: 1, kill_grace_s: 10}",
           extra_args=["term_save_s=1.0", marker])
    assert cli("launch-overnight", "--pick", "stable", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path).returncode == 0
    st = wait_state(tmp_path, "running")
    trainer_up(st, marker)  # its SIGTERM handler is installed before it allocates and says "holding"
    subprocess.run(["tmux", "kill-session", "-t", f"={st['tmux_session']}"], check=True)
    ended = wait_state(tmp_path, "ended", timeout=30)
    assert ended["outcome"] == "interrupted"
    log = (Path(ended["folder"]) / "log.txt").read_text()
    assert "memhog: saving checkpoint" in log and "memhog: checkpoint saved" in log  # SIGTERM first, then its grace
    assert ended["evidence"]["exit_code"] == 0  # it finished saving and exited on its own, within the grace
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])
                and p.status() != psutil.STATUS_ZOMBIE]


def test_stop_ends_the_long_run_gently_and_records_it_interrupted(tmp_path, tmux_cleanup, marker):
    ladder(tmp_path, overnight="{max_steps: 100000, check_interval: 1000, limit_batches: 1, kill_grace_s: 5}",
           extra_args=[marker])
    runs = str(tmp_path / "runs")
    assert cli("launch-overnight", "--pick", "stable", "--runs-dir", runs, cwd=tmp_path).returncode == 0
    trainer_up(wait_state(tmp_path, "running"), marker)
    res = cli("stop", "--runs-dir", runs, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "SIGTERM, up to 5 s to save its state, then SIGKILL" in res.stderr
    assert "ENDED" in res.stdout and "bs=4 overnight interrupted" in res.stdout
    assert status(tmp_path)["outcome"] == "interrupted"
    assert not alive_with(marker)
    again = cli("stop", "--runs-dir", runs, cwd=tmp_path)
    assert again.returncode == 0 and "no long run is running" in again.stdout

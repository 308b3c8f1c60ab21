"""The SLURM executor against a real single-node SLURM (slurmctld + slurmd with proctrack/cgroup and task/cgroup,
started for the session by tests/slurm/cluster.sh), with jobs submitted by an ordinary user (nobody) as on a
cluster: the same pick as the local executor, OUT_OF_MEMORY classified from both sides' evidence, Ctrl-C leaving
no job, a SIGKILLed orchestrator's jobs re-attached, and every other way a job ends."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import STATUS_RPCS, cli

pytestmark = [pytest.mark.slurm, pytest.mark.nobody, pytest.mark.process]

MIB = 2**20


def write_spec(env, name: str, *, kind="slurm", args=(), batch_sizes="[2, 4, 8, 16]", cap="400MiB", timeout_s=60,
               slurm="", extra="", runs=None) -> Path:
    argv = [str(env.python), str(env.memhog), "base_mb=50", "mb_per_sample=30", "step_s=0.02", *args]
    slurm_line = f"executor: {{kind: {kind}, slurm: {{cpus_per_task: 1{', ' + slurm if slurm else ''}}}}}\n"
    path = env.work / f"{name}.yaml"
    path.write_text(f"name: {name}\ncommand: {json.dumps(argv)}\nbatch_sizes: {batch_sizes}\n"
                    f"probe: {{max_steps: 20, check_interval: 10, limit_batches: 1}}\n"
                    f"memory: {{rss_limit: 4GiB, cap: {cap}, sample_interval_s: 0.05}}\n"
                    f"runs_dir: {runs or env.work / 'runs'}\ntimeout_s: {timeout_s}\nwarmup: false\n"
                    f"{slurm_line}{extra}")
    os.chmod(path, 0o644)
    return path


def run_dir(env, name: str) -> Path:
    return sorted((env.work / "runs" / name).iterdir())[-1]


def record(run: Path, folder: str) -> dict:
    return json.loads((run / folder / "result.json").read_text())


def wait_for(predicate, timeout=60.0, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(every)
    raise AssertionError("timed out waiting")


def running_job(run_root: Path, folder: str):
    """The job id of a probe whose runner is running (running.json has its pid)."""
    def find():
        for path in run_root.glob(f"*/{folder}/running.json"):
            try:
                if json.loads(path.read_text()).get("pid"):
                    return json.loads((path.parent / "submitted.json").read_text())["job_id"]
            except (OSError, ValueError, KeyError):
                pass
        return None
    return find


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "")


def test_the_same_spec_gives_the_same_pick_local_and_on_slurm(slurm, user_env, need_cgroup):
    local = write_spec(user_env, "hog", kind="local", runs=user_env.work / "runs-root")
    res = cli("run", str(local), cwd=user_env.work, timeout=240)  # as root: a local probe cgroup with the cap
    assert res.returncode == 0, res.stderr
    assert "pick: bs=8" in res.stdout and "bs=16 oom_killed at 400 MiB under a 400 MiB cap" in res.stdout

    spec = write_spec(user_env, "hog")  # the same ladder, executor.kind: slurm, submitted by nobody
    res = user_env.cli("run", str(spec))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pick: bs=8" in res.stdout
    run = run_dir(user_env, "hog")
    oom = record(run, "bs-0016")
    assert oom["outcome"] == "oom_killed", oom["evidence"]
    ev = oom["evidence"]
    # both sides: the kernel's counter in the job's own cgroup, read without root, and SLURM's state
    assert ev["exit_code"] == 137 and ev["oom_kills_after"] - ev["oom_kills_before"] >= 1
    assert "OUT_OF_MEMORY" in ev["scheduler"] and "ExitCode 0:125" in ev["scheduler"]
    assert ev["detail"] == "the kernel OOM-killed the main process; SLURM agrees (OUT_OF_MEMORY)"
    assert oom["limits"]["cgroup"].startswith("v1 /sys/fs/cgroup/memory/slurm") and "/uid_65534/" in \
        oom["limits"]["cgroup"]
    assert 390 * MIB <= oom["peaks"]["kernel_bytes"] <= 400 * MIB
    ok = record(run, "bs-0008")
    assert ok["outcome"] == "ok" and "COMPLETED" in ok["evidence"]["scheduler"]
    submitted = json.loads((run / "bs-0008" / "submitted.json").read_text())
    assert submitted["executor"] == "slurm" and submitted["job_id"]
    assert not slurm.queue()


def test_ctrl_c_cancels_the_jobs_and_leaves_none(slurm, user_env):
    spec = write_spec(user_env, "cc", args=["steps=3000"], batch_sizes="[2]")
    proc = user_env.popen("run", str(spec))
    job = wait_for(running_job(user_env.work / "runs" / "cc", "bs-0002"), 60)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert not slurm.queue("hlrp-cc"), slurm.queue()
    rec = record(run_dir(user_env, "cc"), "bs-0002")
    assert rec["outcome"] == "interrupted"
    assert job_state(job) in ("CANCELLED", "COMPLETED")  # the runner stopped the probe and exited, or SLURM did


def test_a_sigkilled_orchestrator_leaves_its_job_running_and_resume_reattaches(slurm, user_env):
    spec = write_spec(user_env, "rk", args=["steps=250"], batch_sizes="[2, 4]")  # ~5 s a probe
    proc = user_env.popen("run", str(spec))
    job = wait_for(running_job(user_env.work / "runs" / "rk", "bs-0004"), 90)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert job_state(job) == "RUNNING"  # a closed laptop does not kill the cluster's jobs
    res = user_env.cli("run", str(spec), "--resume")
    assert res.returncode == 0, res.stderr
    assert f"resume: bs-0004: SLURM job {job}" in res.stderr and "re-attached" in res.stderr
    assert "pick: bs=4" in res.stdout
    run = run_dir(user_env, "rk")
    assert not list(run.glob("bs-0004.*"))  # collected from the job that ran on, not run again
    assert json.loads((run / "bs-0004" / "submitted.json").read_text())["job_id"] == job
    assert record(run, "bs-0004")["outcome"] == "ok"


def test_a_rejected_submission_and_a_job_that_never_starts_say_so_in_one_line(slurm, user_env):
    spec = write_spec(user_env, "rj", batch_sizes="[2]", slurm="partition: nope")
    blocked = user_env.cli("run", str(spec))
    assert blocked.returncode == 4 and "nope" in blocked.stderr
    res = user_env.cli("run", str(spec), "--skip-preflight")
    assert res.returncode == 5, res.stderr
    assert "bs=2 error (exit None: sbatch: error: Batch job submission failed: Invalid partition name specified)" \
           in res.stderr
    # 3 CPUs on a 2-CPU node: accepted, then pending forever (Reason=PartitionConfig); timeout_s gives it up
    pend = write_spec(user_env, "pd", batch_sizes="[2]", timeout_s=4, slurm="cpus_per_task: 3",
                      extra="retries: 0\n")
    pend.write_text(pend.read_text().replace("cpus_per_task: 1, cpus_per_task: 3", "cpus_per_task: 3"))
    res = user_env.cli("run", str(pend), "--skip-preflight")
    assert res.returncode == 5, res.stderr
    rec = record(run_dir(user_env, "pd"), "bs-0002")
    assert rec["evidence"]["detail"].startswith("the job never started: still pending after")
    assert "PENDING (Reason=PartitionConfig)" in rec["evidence"]["scheduler"]
    assert not slurm.queue("hlrp-pd")


def test_a_job_lost_with_its_node_is_inconclusive_and_retried(slurm, user_env):
    flag = user_env.work / "slow"
    flag.touch()
    spec = write_spec(user_env, "nf", args=[f"slow_if_exists={flag}"], batch_sizes="[2]", timeout_s=120)
    proc = user_env.popen("run", str(spec))
    job = wait_for(running_job(user_env.work / "runs" / "nf", "bs-0002"), 60)
    slurmd = int((slurm.state / "slurmd.pid").read_text())
    os.kill(slurmd, signal.SIGKILL)
    try:
        wait_for(lambda: job_state(job) == "NODE_FAIL", 60, every=0.5)
        flag.unlink()  # the retry runs at once
    finally:
        start = subprocess.run(["bash", str(Path(__file__).parent / "slurm" / "cluster.sh"), "start",
                                str(slurm.state)], capture_output=True, text=True, timeout=120)
        assert start.returncode == 0, start.stderr
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "pick: bs=2" in out
    run = run_dir(user_env, "nf")
    lost = record(run, "bs-0002")
    assert lost["outcome"] == "error" and lost["evidence"]["detail"].startswith("the job was lost (NODE_FAIL)")
    assert "NODE_FAIL (Reason=NodeDown)" in lost["evidence"]["scheduler"]
    assert record(run, "bs-0002-retry1")["outcome"] == "ok"


def test_slurm_time_limit_is_a_timeout_not_a_memory_verdict(slurm, user_env):
    # --time=1 (a minute; SLURM checks limits every ~30 s, so it takes 60-90 s), the probe's own timeout later
    spec = write_spec(user_env, "to", args=["hang=1"], batch_sizes="[2]", timeout_s=600, slurm="time: 1",
                      extra="retries: 0\n")
    res = user_env.cli("run", str(spec), timeout=300)
    assert res.returncode == 5, res.stderr
    rec = record(run_dir(user_env, "to"), "bs-0002")
    assert rec["outcome"] == "timeout"
    assert rec["evidence"]["detail"].startswith("SLURM stopped the job at its time limit")
    assert "TIMEOUT (Reason=TimeLimit)" in rec["evidence"]["scheduler"]


def long_run(user_env, name: str, overnight: str):
    """A ladder of ``name`` run as nobody, its long run launched and seen running: (spec, the launch, status)."""
    spec = write_spec(user_env, name, batch_sizes="[2, 4]", extra=f"overnight: {overnight}\n")
    assert user_env.cli("run", str(spec)).returncode == 0
    res = user_env.cli("launch-overnight", "--pick", "stable", "--runs-dir", str(user_env.work / "runs"))
    assert res.returncode == 0, res.stderr
    st = wait_for(lambda: (lambda s: s if s["state"] == "running" else None)(
        json.loads(user_env.cli("status", "--json", "--spec", str(spec)).stdout)), 60)
    return spec, res, st


def test_the_long_run_is_a_slurm_job_and_status_follows_it(slurm, user_env):
    spec, res, st = long_run(user_env, "night", "{hours: 0.005, check_interval: 100, limit_batches: 1}")
    assert "starts as SLURM job" in res.stdout and "started: SLURM job" in res.stdout
    assert st["executor"] == "slurm" and st["job_id"]
    limit = subprocess.run(["scontrol", "-o", "show", "job", st["job_id"]], capture_output=True, text=True).stdout
    assert "TimeLimit=00:11:00" in limit  # 18 s asked (hours: 0.005) + 10 minutes' margin, rounded up
    human = user_env.cli("status", "--runs-dir", str(user_env.work / "runs")).stdout
    assert "RUNNING (SLURM job" in human
    ended = wait_for(lambda: (lambda s: s if s["state"] == "ended" else None)(
        json.loads(user_env.cli("status", "--json", "--runs-dir", str(user_env.work / "runs")).stdout)), 120, 1)
    assert ended["outcome"] == "ok" and "COMPLETED" in ended["evidence"]["scheduler"]


def test_preflight_on_slurm(slurm, user_env, tmp_path):
    spec = write_spec(user_env, "pf", batch_sizes="[2]")
    res = user_env.cli("preflight", str(spec), "--json")
    assert res.returncode == 0, res.stdout
    found = {f["check"]: f for f in json.loads(res.stdout)}
    assert found["slurm shared runs dir"]["status"] == "ok"
    assert found["slurm python"]["status"] == "ok" and "runs the probe runner" in found["slurm python"]["detail"]
    assert found["slurm memory"]["status"] == "ok", found["slurm memory"]
    assert found["slurm memory"]["detail"].startswith("each probe --mem=400M: within the largest node of debug")
    # a controller that does not answer, and a partition that does not exist: blockers, nothing started
    conf = Path(slurm.conf).read_text().replace("SlurmctldPort=6817", "SlurmctldPort=6899")
    down = user_env.work / "down.conf"
    down.write_text(conf)
    os.chmod(down, 0o644)
    res = user_env.cli("preflight", str(spec), "--json", env={"SLURM_CONF": str(down)}, timeout=120)
    assert res.returncode == 4
    assert {f["check"]: f for f in json.loads(res.stdout)}["slurm controller"]["status"] == "fail"
    spec.write_text(spec.read_text().replace("cpus_per_task: 1", "cpus_per_task: 1, partition: nope"))
    res = user_env.cli("preflight", str(spec), "--json")
    assert res.returncode == 4
    assert "nope" in {f["check"]: f for f in json.loads(res.stdout)}["slurm partition"]["detail"]


def test_two_slots_run_two_jobs_at_once_with_the_same_pick(slurm, user_env):
    spec = write_spec(user_env, "par", args=["steps=60"], extra="")
    spec.write_text(spec.read_text().replace("executor: {kind: slurm,", "executor: {kind: slurm, max_parallel: 2,"))
    res = user_env.cli("run", str(spec))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pick: bs=8" in res.stdout  # what the sequential ladder picks (test_the_same_spec_...)
    run = run_dir(user_env, "par")
    recs = sorted((json.loads(p.read_text()) for p in run.glob("bs-*/result.json")), key=lambda r: r["started_at"])
    assert any(a["ended_at"] > b["started_at"] for a, b in zip(recs, recs[1:]))  # two jobs at once
    assert not slurm.queue("hlrp-par")


def test_a_compare_matrix_through_slurm_finds_the_known_cost(slurm, user_env):
    spec = write_spec(user_env, "cmpsl", batch_sizes="[8]", cap="400MiB", extra="""compare:
  batch_size: 8
  max_steps: 40
  check_interval: 20
  repeats: 2
  variants:
    base: {}
    slow: {step_s: 0.04}
""")
    spec.write_text(spec.read_text().replace("executor: {kind: slurm,", "executor: {kind: slurm, max_parallel: 2,"))
    res = user_env.cli("compare", str(spec))
    assert res.returncode == 0, res.stdout + res.stderr
    run = sorted((user_env.work / "runs" / "cmpsl").iterdir())[-1]
    rep = user_env.cli("report", str(run), "--format", "json", "--out", str(user_env.work / "rep"))
    assert rep.returncode == 0, rep.stderr
    data = json.loads(rep.stdout)
    assert len(data["runs"]) == 4 and all("COMPLETED" in r["evidence"]["scheduler"] for r in data["runs"])
    assert data["pairs"][0]["metrics"]["step_per_s"]["verdict"] == "slower"
    assert not slurm.queue("hlrp-cmpsl")


def test_stop_ends_the_long_run_on_slurm_and_records_it_interrupted(slurm, user_env):
    spec, _, st = long_run(user_env, "stopme", "{hours: 1, check_interval: 100, limit_batches: 1, kill_grace_s: 5}")
    res = user_env.cli("stop", "--spec", str(spec))
    assert res.returncode == 0, res.stderr
    assert f"(SLURM job {st['job_id']}" in res.stderr and "SIGTERM, up to 5 s to save its state" in res.stderr
    ended = json.loads(user_env.cli("status", "--json", "--spec", str(spec)).stdout)
    assert ended["state"] == "ended" and ended["outcome"] == "interrupted", ended
    assert not slurm.queue()


# ---- at scale: one watcher for all of a run's jobs, one scancel, slurmdbd, jobs purged while away ----------------


def test_a_matrix_asks_the_controller_once_a_poll_for_all_its_jobs(slurm, user_env):
    spec = write_spec(user_env, "many", batch_sizes="[8]", extra="""compare:
  batch_size: 8
  max_steps: 20
  check_interval: 10
  warmup: false
  repeats: 4
  variants:
    base: {}
    more: {mb_per_sample: 35}
    slow: {step_s: 0.04}
""")
    spec.write_text(spec.read_text().replace("executor: {kind: slurm,", "executor: {kind: slurm, max_parallel: 6,"))
    subprocess.run(["sdiag", "-r"], check=True, capture_output=True)
    t0 = time.monotonic()
    res = user_env.cli("compare", str(spec))
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    rpcs = slurm.rpcs()
    run = run_dir(user_env, "many")
    calls = json.loads((run / "ladder.json").read_text())["scheduler_calls"]
    status = sum(rpcs.get(k, 0) for k in STATUS_RPCS)
    # every job-status RPC came from one squeue for all the run's jobs (2 RPCs each: this user's jobs and the
    # partitions) or from the few `scontrol show partition|node|config` reads (1 each); never one job at a time
    assert status <= 2 * calls["squeue"] + calls.get("scontrol", 0), (rpcs, calls)
    assert rpcs.get("REQUEST_JOB_INFO_SINGLE", 0) == 0, rpcs
    assert calls["squeue"] <= wall + 2, (calls, wall)             # never more than one poll a second
    assert calls["sbatch"] == 13 and calls["sacct"] <= calls["squeue"], calls  # 12 runs, preflight's job
    recs = [json.loads(p.read_text()) for p in run.glob("*-r*/result.json")]
    assert len(recs) == 12 and all(r["outcome"] == "ok" for r in recs)
    # every ended job was read from accounting too: its batch step's MaxRSS beside the controller's state
    assert all("COMPLETED" in r["evidence"]["scheduler"] and "MaxRSS" in r["evidence"]["scheduler"] for r in recs)
    assert not slurm.queue("hlrp-many")


def test_ctrl_c_cancels_every_job_in_one_scancel(slurm, user_env):
    spec = write_spec(user_env, "cc3", args=["steps=3000"], extra="""compare:
  batch_size: 2
  max_steps: 3000
  check_interval: 1000
  warmup: false
  repeats: 1
  variants: {a: {}, b: {base_mb: 40}, c: {base_mb: 30}}
""")
    spec.write_text(spec.read_text().replace("executor: {kind: slurm,", "executor: {kind: slurm, max_parallel: 3,"))
    proc = user_env.popen("compare", str(spec))
    root = user_env.work / "runs" / "cc3"
    jobs = [wait_for(running_job(root, v), 90) for v in ("a-r1", "b-r1")]   # two running (2 CPUs), one pending
    jobs.append(wait_for(lambda: next((json.loads(p.read_text())["job_id"] for p in root.glob("*/c-r1/submitted.json")),
                                      None), 30))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert not slurm.queue("hlrp-cc3"), slurm.queue()
    run = run_dir(user_env, "cc3")
    assert json.loads((run / "ladder.json").read_text())["scheduler_calls"]["scancel"] == 1
    recs = {v: record(run, f"{v}-r1") for v in "abc"}
    assert all(r["outcome"] == "interrupted" for r in recs.values()), {v: (r["outcome"], r["evidence"])
                                                                       for v, r in recs.items()}
    assert all(job_state(j) in ("CANCELLED", "COMPLETED") for j in jobs)


@pytest.mark.parametrize("accounting", ["slurmdbd", "none"])
def test_jobs_purged_while_the_orchestrator_was_away_are_classified_on_resume(slurm, user_env, accounting):
    """The orchestrator is SIGKILLed with four jobs running; they end (bs=16 over its --mem) and the controller
    forgets them (MinJobAge=2). --resume classifies every rung: from sacct plus the runner's record, or, with no
    accounting, from the record alone, saying so. Never a job taken for lost while its record is there."""
    name = f"purge-{accounting}"
    with slurm.configured(min_job_age=2, accounting=accounting):
        # each probe waits 3 s before it allocates (so bs=16 is seen running before its OOM kill), then ~3 s
        spec = write_spec(user_env, name, args=["steps=150", "start_delay_s=3"])
        spec.write_text(spec.read_text().replace("executor: {kind: slurm,", "executor: {kind: slurm, max_parallel: 4,"))
        proc = user_env.popen("run", str(spec))
        root = user_env.work / "runs" / name
        jobs = {bs: wait_for(running_job(root, f"bs-{bs:04d}"), 90) for bs in (2, 4, 8, 16)}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for(lambda: not any(slurm.known(j) for j in jobs.values()), 180, every=1)
        res = user_env.cli("run", str(spec), "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pick: bs=8" in res.stdout and "lost" not in res.stdout + res.stderr
    run = run_dir(user_env, name)
    # settle's note for each probe it classified on resume: "resume: bs-0016: oom_killed; SLURM job 9 ..."
    settled = [bs for bs, job in jobs.items() if f"resume: bs-{bs:04d}: {'oom_killed' if bs == 16 else 'ok'}; "
               f"SLURM job {job}" in res.stderr]
    assert 16 in settled, res.stderr   # the last one started was still running when the orchestrator died
    for bs, job in jobs.items():
        rec = record(run, f"bs-{bs:04d}")
        said = rec["evidence"]["scheduler"]
        assert rec["outcome"] == ("oom_killed" if bs == 16 else "ok"), rec
        assert said.startswith(f"SLURM job {job}"), said
        if bs not in settled:  # it ended, and was collected, before the orchestrator was killed
            continue
        if accounting == "slurmdbd":
            assert "(from accounting)" in said and "MaxRSS" in said, said
            assert ("OUT_OF_MEMORY" if bs == 16 else "COMPLETED") in said
        else:
            assert said.endswith("classified from the runner's record alone"), said
            assert "no accounting" in said


def test_preflight_finds_the_mem_sbatch_would_leave_pending_and_a_qos_limit_not_enforced(slurm, user_env):
    """A partition whose MaxMemPerNode is under the warm-up's --mem (twice the cap): measured here, sbatch takes
    such a job and it pends forever (Reason=MaxMemPerLimit); preflight fails first, naming the warm-up. A QOS
    limit under --mem on a cluster that does not enforce QOS limits (AccountingStorageEnforce=none: the job runs,
    measured): a warning, not a blocker."""
    node = subprocess.run(["scontrol", "-o", "show", "node"], capture_output=True, text=True).stdout.split()[0]
    node = node.split("=", 1)[1]
    subprocess.run(["scontrol", "create", "PartitionName=small", f"Nodes={node}", "MaxMemPerNode=300", "State=UP"],
                   check=True, capture_output=True)
    subprocess.run(["sacctmgr", "-i", "add", "qos", "tinymem", "MaxTRESPerJob=mem=300M"], check=True,
                   capture_output=True)
    try:
        spec = write_spec(user_env, "pfmem", batch_sizes="[2]", cap="250MiB", slurm="partition: small")
        spec.write_text(spec.read_text().replace("warmup: false", "warmup: true"))
        res = user_env.cli("preflight", str(spec), "--json")
        assert res.returncode == 4, res.stdout
        found = {f["check"]: f for f in json.loads(res.stdout)}["slurm memory"]
        assert found["status"] == "fail" and found["detail"] == (
            "the warm-up asks --mem=500M, over partition small's MaxMemPerNode=300M: sbatch would refuse the job, "
            "or it would pend forever"), found
        assert "warmup: false" in found["fix"]
        spec = write_spec(user_env, "pfqos", batch_sizes="[2]", cap="400MiB", slurm="qos: tinymem")
        res = user_env.cli("preflight", str(spec), "--json")
        found = {f["check"]: f for f in json.loads(res.stdout)}["slurm memory"]
        assert found["status"] == "warn", found
        assert ("each probe asks --mem=400M, over QOS tinymem's MaxTRES mem=300M, which this cluster does not "
                "enforce (AccountingStorageEnforce=none)") in found["detail"]
    finally:
        subprocess.run(["scontrol", "delete", "PartitionName=small"], capture_output=True)
        subprocess.run(["sacctmgr", "-i", "delete", "qos", "tinymem"], capture_output=True)

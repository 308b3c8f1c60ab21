"""Caps without root: an ordinary user (nobody) whose cgroup subtree root delegated to them gets probe cgroups
with a real kernel cap inside it, and a real OOM kill classified; without delegation the run says "no cap: <why>"
and goes on with the soft limit. Percentages resolve against what the process can really use."""
import json
import os
import time
from pathlib import Path

import pytest

from hlrp_ladder.probe import cgroup as cgroups
from tests.helpers import cli

MIB = 2**20


@pytest.fixture
def delegated(user_env):
    """A cgroup subtree root made and handed to nobody, the way systemd delegates one (Delegate=yes): the folder
    and its cgroup.procs (v2: also cgroup.subtree_control and cgroup.threads) owned by the user."""
    v1, v2 = cgroups.mounts()
    name = f"hlrp-deleg-{os.getpid()}-{time.monotonic_ns()}"
    if v1 is not None:
        path, files = v1 / name, ("cgroup.procs", "tasks")
    else:
        root_ctl = v2 / "cgroup.subtree_control"
        if "memory" not in root_ctl.read_text().split():
            root_ctl.write_text("+memory")
        path, files = v2 / name, ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")
    path.mkdir()
    for item in (path, *(path / f for f in files)):
        os.chown(item, user_env.uid, user_env.uid)
    yield path
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        cgroups.MemoryCgroup(1 if v1 else 2, folder).kill_all()
        folder.rmdir()
    cgroups.MemoryCgroup(1 if v1 else 2, path).kill_all()
    path.rmdir()


def hog_spec(user_env, name: str, cap="250MiB") -> Path:
    argv = [str(user_env.python), str(user_env.memhog), "base_mb=50", "mb_per_sample=20", "step_s=0.02"]
    path = user_env.work / f"{name}.yaml"
    path.write_text(f"name: {name}\ncommand: {json.dumps(argv)}\nbatch_sizes: [2, 4, 8, 16]\n"
                    f"probe: {{max_steps: 20, check_interval: 10, limit_batches: 1}}\n"
                    f"memory: {{rss_limit: 4GiB, cap: {cap}, sample_interval_s: 0.05}}\n"
                    f"runs_dir: {user_env.work / 'runs'}\ntimeout_s: 60\n")
    os.chmod(path, 0o644)
    return path


@pytest.mark.process
@pytest.mark.nobody
def test_a_delegated_subtree_gives_an_ordinary_user_a_real_cap(user_env, delegated):
    procs = delegated / "cgroup.procs"
    res = user_env.cli("run", str(hog_spec(user_env, "dg")), before=lambda: procs.write_text("0"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no cap" not in res.stderr, res.stderr
    assert "pick: bs=8" in res.stdout and "bs=16 oom_killed at 250 MiB under a 250 MiB cap" in res.stdout
    run = sorted((user_env.work / "runs" / "dg").iterdir())[-1]
    oom = json.loads((run / "bs-0016" / "result.json").read_text())
    assert oom["outcome"] == "oom_killed" and oom["evidence"]["exit_code"] == 137
    assert oom["evidence"]["oom_kills_after"] - oom["evidence"]["oom_kills_before"] == 1
    assert oom["limits"]["cgroup"].startswith(f"v{1 if cgroups.mounts()[0] else 2} {delegated}/hlrp-ladder/")
    host = json.loads((run / "ladder.json").read_text())["host"]
    assert host["cap_enforced"] is True and host["cgroup_parent"].endswith(f"{delegated}/hlrp-ladder")
    # nothing left behind in the user's subtree (on v2 also the leaf the run moved itself into)
    assert [p.name for p in delegated.iterdir() if p.is_dir()] == []
    if not cgroups.mounts()[0]:
        assert "memory" not in (delegated / "cgroup.subtree_control").read_text().split()


@pytest.mark.process
@pytest.mark.nobody
def test_without_delegation_the_run_says_no_cap_and_judges_by_the_soft_limit(user_env):
    res = user_env.cli("run", str(hog_spec(user_env, "nd")))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no cap: " in res.stderr and "going on with the soft limit only, lowered to the cap's 250 MiB" in res.stderr
    # the soft limit (summed RSS, 250 MiB) now does the cap's job: bs=16 breaches it, bs=8 is picked
    assert "pick: bs=8" in res.stdout and "bs=16 rss_breach" in res.stdout
    run = sorted((user_env.work / "runs" / "nd").iterdir())[-1]
    state = json.loads((run / "ladder.json").read_text())
    assert state["host"]["cap_enforced"] is False
    assert state["plan"]["cap_bytes"] is None and state["plan"]["rss_limit_bytes"] == 250 * MIB
    assert json.loads((run / "bs-0008" / "result.json").read_text())["limits"]["cgroup"] is None
    pre = user_env.cli("preflight", str(hog_spec(user_env, "nd")), "--json")
    assert pre.returncode == 0  # not a blocker
    cap = {f["check"]: f for f in json.loads(pre.stdout)}["memory cap"]
    assert cap["status"] == "warn" and cap["detail"].startswith("no cap: 250 MiB cannot be enforced here")


@pytest.mark.process
def test_percentages_resolve_against_the_memory_a_cgroup_leaves(tmp_path, need_cgroup):
    jail, _ = cgroups.create(f"pytest-usable-{os.getpid()}", 2 << 30)  # as a container or a job would be
    try:
        spec = tmp_path / "p.yaml"
        spec.write_text("name: p\nbatch_sizes: [1]\nmemory: {rss_limit: 50%}\n")
        res = cli("validate", str(spec), preexec_fn=lambda: jail.procs_file.write_text("0"))
        assert res.returncode == 0, res.stderr
        assert "soft limit 50% = 1.00 GiB" in res.stdout  # of the 2 GiB the cgroup allows, not of the RAM
    finally:
        jail.remove()

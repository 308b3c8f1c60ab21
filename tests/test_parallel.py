"""Parallel slots with real processes: the same pick as the sequential ladder, each probe on its own cores and
in its own capped cgroup, speculative probes cancelled and kept, a machine too small for the slots refused."""
import json
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.helpers import MEMHOG, cli, start_until

pytestmark = pytest.mark.process


def spec(tmp_path: Path, name: str, *, parallel: int, cap="250MiB", extra="", args=()) -> Path:
    argv = [sys.executable, str(MEMHOG), "base_mb=50", "mb_per_sample=20", "step_s=0.01", *args]
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ncommand: {json.dumps(argv)}\nbatch_sizes: [2, 4, 6, 8, 10, 12, 16]\n"
                    f"probe: {{max_steps: 30, check_interval: 10, limit_batches: 1}}\n"
                    f"stress: {{max_steps: 120, check_interval: 30, limit_batches: 1}}\n"
                    f"memory: {{rss_limit: 4GiB, cap: {cap}, sample_interval_s: 0.05}}\n"
                    f"executor: {{max_parallel: {parallel}}}\nruns_dir: {tmp_path / 'runs'}\ntimeout_s: 60\n"
                    f"warmup: false\n{extra}")
    return path


def records(tmp_path: Path, name: str) -> dict[str, dict]:
    run = sorted((tmp_path / "runs" / name).iterdir())[-1]
    return {p.parent.name: json.loads(p.read_text()) for p in run.glob("bs-*/result.json")}


def test_two_slots_pick_what_one_slot_picks_each_probe_on_its_own_core(tmp_path, need_cgroup):
    # memory 50 + 20 MiB x bs, and 15 MiB more kept per validation: under 250 MiB bs=6 passes one-val and
    # stress, bs=8 fails one-val
    growth = ["growth_mb_per_val=15"]
    one = cli("run", str(spec(tmp_path, "one", parallel=1, args=growth)), cwd=tmp_path, timeout=300)
    two = cli("run", str(spec(tmp_path, "two", parallel=2, args=growth)), cwd=tmp_path, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    pick = re.search(r"pick: bs=(\d+)", one.stdout).group(1)
    assert pick == "6" and f"pick: bs={pick}" in two.stdout
    recs = sorted(records(tmp_path, "two").values(), key=lambda r: r["started_at"])
    overlapped = any(a["ended_at"] > b["started_at"] for a, b in zip(recs, recs[1:]))
    assert overlapped  # two probes really ran at once
    run = sorted((tmp_path / "runs" / "two").iterdir())[-1]
    cores, ran_on = {}, {}
    for folder in run.glob("bs-*"):
        request = json.loads((folder / "request.json").read_text())
        assert len(request["cpus"]) == 1
        cores.setdefault(tuple(request["cpus"]), []).append(folder.name)
        result = folder / "result.json"
        if result.exists() and json.loads(result.read_text())["outcome"] == "ok":
            # a trainer that ran to its end printed where it ran: exactly its slot's core
            log = (folder / "log.txt").read_text()
            assert f"on cpus {request['cpus']}" in log, (folder.name, log)
            ran_on.setdefault(tuple(request["cpus"]), []).append(folder.name)
    assert len(cores) == 2, cores  # both slots were used
    assert len(ran_on) == 2, ran_on  # and a trainer ran to its end on each slot's core


def test_too_many_slots_for_the_machine_are_refused(tmp_path):
    import os

    n = len(os.sched_getaffinity(0))
    res = cli("preflight", str(spec(tmp_path, "many", parallel=n + 1)), "--json")
    assert res.returncode == 4
    found = {f["check"]: f for f in json.loads(res.stdout)}
    assert found["parallel cores"]["status"] == "fail"
    res = cli("preflight", str(spec(tmp_path, "big", parallel=2, cap="20GiB")), "--json")
    assert res.returncode == 4
    assert {f["check"]: f for f in json.loads(res.stdout)}["parallel memory"]["detail"].startswith("2 slots x the")


def test_ctrl_c_with_two_probes_in_flight(tmp_path, marker):
    path = spec(tmp_path, "cc", parallel=2, cap="1GiB", args=["steps=3000", marker])
    proc = start_until("run", str(path), cwd=tmp_path, pattern="runs/cc/*/bs-*/running.json", count=2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    outcomes = {name: r["outcome"] for name, r in records(tmp_path, "cc").items()}
    assert list(outcomes.values()).count("interrupted") == 2, outcomes

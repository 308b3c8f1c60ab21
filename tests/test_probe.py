"""Every outcome of the taxonomy, each from a real process under the real monitor."""
import json
import os
import time
from pathlib import Path

import psutil
import pytest

from hlrp_ladder.records import ProbeRequest
from hlrp_ladder.probe.folder import ProbeFolder
from hlrp_ladder.probe.runner import run_probe
from hlrp_ladder.probe.cgroup import discovery as cgroup_discovery
from hlrp_ladder.records import Outcome
from tests.helpers import memhog, wait_for

MIB = 2**20


def request(tmp_path: Path, argv: list[str], *, rss_limit=4 << 30, cap=None, metric="rss", timeout=60.0,
            grace=1.0, name="p") -> ProbeRequest:
    return ProbeRequest(folder=tmp_path / name, batch_size=8, phase="ladder", attempt=1, argv=argv,
                        env={"HLRP_TEST": "1"}, cwd=str(tmp_path), rss_limit_bytes=rss_limit, cap_bytes=cap,
                        metric=metric, interval_s=0.05, timeout_s=timeout, kill_grace_s=grace,
                        cgroup_name=f"pytest-{os.getpid()}-{name}-{time.monotonic_ns()}")


def run(req, should_stop=None):
    return run_probe(req, None, should_stop)


def no_process_with(marker: str) -> bool:
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
            if proc.status() != psutil.STATUS_ZOMBIE:
                return False
    return True


@pytest.mark.process
def test_ok_writes_the_whole_probe_folder(tmp_path):
    rec = run(request(tmp_path, memhog("base_mb=60", "mb_per_sample=0", "steps=20", "check_interval=10")))
    assert rec.outcome == Outcome.ok and rec.evidence.exit_code == 0
    folder = tmp_path / "p"
    assert sorted(p.name for p in folder.iterdir()) == ["argv.json", "log.txt", "memory.csv", "metrics.jsonl",
                                                        "result.json"]
    assert rec.peaks.samples > 3
    assert rec.peaks.kernel_bytes >= 60 * MIB and rec.peaks.sampled_rss_bytes >= 60 * MIB
    assert rec.metrics.source == "jsonl" and rec.metrics.val_loss == pytest.approx(0.05)
    assert [p.step for p in rec.metrics.val_points] == [10, 20]
    # the last validation ends the run: its memory is the process's, not a sample taken as it exits
    assert all(p.rss_bytes >= 60 * MIB for p in rec.metrics.val_points)
    assert "HLRP_TEST" in (folder / "argv.json").read_text()


@pytest.mark.process
def test_kernel_oom_kill_under_a_cap(tmp_path, need_cgroup):
    rec = run(request(tmp_path, memhog("base_mb=400", "steps=5"), cap=150 * MIB))
    assert rec.outcome == Outcome.oom_killed, rec.evidence
    assert rec.evidence.exit_code == 137 and rec.evidence.signal == "SIGKILL"
    assert rec.evidence.oom_kills_after - rec.evidence.oom_kills_before >= 1
    assert rec.limits.cgroup.startswith(("v1 ", "v2 "))
    assert 140 * MIB <= rec.peaks.kernel_bytes <= 151 * MIB  # the kernel's exact peak, at the cap


@pytest.mark.process
def test_page_cache_fills_the_cap_but_the_working_set_is_what_the_probe_needs(tmp_path, need_cgroup):
    # 40 MiB held, 300 MiB written (fsync'd) in 6 validations under a 200 MiB cap: the kernel takes the cache back
    rec = run(request(tmp_path, memhog("base_mb=40", "mb_per_sample=0", "steps=60", "check_interval=10",
                                       "cache_mb_per_val=50", "step_s=0.02"), cap=200 * MIB))
    assert rec.outcome == Outcome.ok, rec.evidence
    assert rec.peaks.kernel_bytes > 180 * MIB                  # the charge ran up to the cap ...
    assert rec.peaks.working_set_sampled_bytes < 120 * MIB     # ... what the probe cannot do without did not
    header, *rows = (tmp_path / "p" / "memory.csv").read_text().splitlines()
    assert header.split(",")[-1] == "working_set" and all(r.split(",")[6] for r in rows[1:])
    ws = [p.working_set_bytes for p in rec.metrics.val_points]
    assert len(ws) == 6 and max(ws) < 120 * MIB


@pytest.mark.process
def test_worker_oom_is_child_oom_not_oom_killed(tmp_path, need_cgroup):
    # The parent checks its worker every step and exits 1 when it died. The kernel reclaims for 1-4 s before it
    # OOM-kills in a cgroup this small, so the parent runs up to 20 s (it exits as soon as the worker dies).
    argv = memhog("base_mb=30", "workers=1", "worker_mb=20", "worker_extra_mb=300", "worker_at=2", "steps=1000",
                  "step_s=0.02")
    rec = run(request(tmp_path, argv, cap=200 * MIB))
    assert rec.outcome == Outcome.child_oom, rec.evidence
    assert rec.evidence.exit_code == 1 and rec.evidence.signal is None
    assert "worker" in (rec.evidence.log_line or "")


@pytest.mark.process
def test_rss_breach_kills_the_whole_tree_at_once(tmp_path, marker):
    argv = memhog("base_mb=50", "workers=2", "worker_mb=100", "spike_mb=300", "spike_at=10", "steps=400", marker)
    rec = run(request(tmp_path, argv, rss_limit=300 * MIB))
    assert rec.outcome == Outcome.rss_breach
    assert rec.peaks.max_procs == 3
    assert rec.peaks.sampled_rss_bytes > 300 * MIB
    assert no_process_with(marker)


@pytest.mark.process
def test_pss_metric_counts_shared_pages_once(tmp_path):
    argv = memhog("shared_mb=200", "base_mb=1", "workers=3", "worker_mb=1", "steps=30")
    rec = run(request(tmp_path, argv, metric="pss"))
    assert rec.outcome == Outcome.ok
    # forked workers share the parent's pages: summed RSS counts them four times, PSS once
    assert rec.peaks.sampled_pss_bytes < rec.peaks.sampled_rss_bytes * 0.6


@pytest.mark.process
def test_cuda_oom_message_in_the_log(tmp_path):
    msg = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    rec = run(request(tmp_path, memhog("steps=2", f"message={msg}", "exit=1")))
    assert rec.outcome == Outcome.cuda_oom and rec.evidence.log_line == msg


@pytest.mark.process
def test_timeout_terms_then_kills(tmp_path):
    start = time.monotonic()
    rec = run(request(tmp_path, memhog("hang=1", "ignore_term=1"), timeout=1.0, grace=0.5))
    assert rec.outcome == Outcome.timeout and rec.evidence.signal == "SIGKILL"
    assert time.monotonic() - start < 5


@pytest.mark.process
def test_error_exit_code_and_log_line(tmp_path):
    rec = run(request(tmp_path, memhog("steps=2", "message=RuntimeError: something broke", "exit=3")))
    assert rec.outcome == Outcome.error and rec.evidence.exit_code == 3
    assert rec.evidence.log_line == "RuntimeError: something broke"


@pytest.mark.process
def test_missing_executable_is_an_error_not_a_crash(tmp_path):
    rec = run(request(tmp_path, ["/nonexistent/trainer", "a=1"]))
    assert rec.outcome == Outcome.error and rec.evidence.exit_code == 127
    assert "cannot start" in (tmp_path / "p" / "log.txt").read_text()


@pytest.mark.process
def test_interrupted_kills_the_tree(tmp_path, marker):
    deadline = time.monotonic() + 1.0
    rec = run(request(tmp_path, memhog("hang=1", "workers=1", marker)), should_stop=lambda: time.monotonic() > deadline)
    assert rec.outcome == Outcome.interrupted
    assert no_process_with(marker)


@pytest.mark.process
def test_a_child_that_leaves_the_session_is_killed_too(tmp_path, need_cgroup, marker):
    rec = run(request(tmp_path, memhog("escape=1", "steps=10", marker)))
    assert rec.outcome == Outcome.ok
    assert "left running" in rec.evidence.detail
    wait_for(lambda: no_process_with(marker), 5, f"no process carrying {marker}")  # the escaped child, killed


@pytest.mark.process
def test_without_a_writable_cgroup_it_falls_back_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroup_discovery, "mounts", lambda: (None, None))
    rec = run(request(tmp_path, memhog("base_mb=80", "mb_per_sample=0", "steps=10"), cap=50 * MIB))
    assert rec.outcome == Outcome.ok  # nothing enforced the cap: the record must say so
    assert rec.limits.cgroup is None and "NOT enforced" in rec.limits.cgroup_note
    assert rec.peaks.kernel_source.startswith("VmHWM") and rec.peaks.kernel_bytes >= 80 * MIB
    assert rec.evidence.oom_counter == "/proc/vmstat (system-wide)"


@pytest.mark.pure
def test_the_probe_folder_reads_its_timeline_back_and_skips_a_torn_line(tmp_path):
    req = request(tmp_path, ["true"])
    req.folder.mkdir()
    folder = ProbeFolder(req.folder)
    (req.folder / "memory.csv").write_text("t,rss,pss,n_procs,cgroup,gpu,working_set\n0.100,300,,1,200,,150\n"
                                           "0.200,400,,2,250,,180\n0.3")
    s = folder.last_sample()  # the torn last line is skipped
    assert (s.t, s.rss, s.n_procs, s.cgroup, s.working_set) == (0.2, 400, 2, 250, 180)
    rec = folder.substitute(req, Outcome.error, "its node died", None, time.time())
    assert (rec.peaks.sampled_rss_bytes, rec.peaks.cgroup_sampled_bytes, rec.peaks.working_set_sampled_bytes,
            rec.peaks.samples) == (400, 250, 180, 2)
    assert folder.record() == rec and json.loads((req.folder / "result.json").read_text())["outcome"] == "error"
"""Inputs that would eat the machine, and a disk that fills: the tool stays small and says what happened.

Each hostile input runs the real CLI in a fresh Python whose children's peak RSS (``RUSAGE_CHILDREN``) is the
measure: nothing else ran in that process, so the number is this command's (the orchestrator's, its probe
runner's, and the small fixture trainer's). A memory limit on the command is only a safety net, so that a
regression fails the test instead of the machine."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hlrp_ladder.probe import metrics as metrics_mod
from hlrp_ladder.probe.metrics import _Lines
from tests.helpers import ROOT

CHATTY = ROOT / "tests" / "fixtures" / "chatty.py"
MIB = 2**20
SPEC_BOUND_KIB = 200 * 1024      # every command that reads a spec: the issue's bound
RUN_BOUND_KIB = 300 * 1024       # a whole run (orchestrator + runner), whatever the trainer prints
MEASURE = ("import resource, subprocess, sys\n"
           "def cap():\n"
           "    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a safety net, not the measure\n"
           "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, preexec_fn=cap)\n"
           "sys.stderr.write(r.stderr[-4000:])\n"
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)\n")


def measured(*args: str, cwd: Path, timeout: float = 120) -> tuple[int, int, str]:
    """``hlrp-ladder ARGS`` in a fresh Python: (peak RSS of the command and its children in KiB, its exit code,
    its stderr's end)."""
    res = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "hlrp_ladder", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=timeout)
    peak, code = res.stdout.split()
    return int(peak), int(code), res.stderr


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


# ---- specs --------------------------------------------------------------------------------------------------------
@pytest.mark.process
def test_a_yaml_alias_bomb_is_refused_in_one_line_naming_its_first_alias(tmp_path):
    lines = ["name: bomb", "batch_sizes: [8]", "overrides:", "  x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]  # 9^10 values
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    peak, code, err = measured("validate", "bomb.yaml", cwd=tmp_path, timeout=60)
    line = one_error_line(err)
    assert code == 2 and line.startswith("error: bomb.yaml:5: its YAML aliases expand to more than 100,000")
    assert peak < SPEC_BOUND_KIB, peak


@pytest.mark.process
def test_an_alias_inside_its_own_anchor_is_refused_not_walked_forever(tmp_path):
    (tmp_path / "rec.yaml").write_text("name: rec\nbatch_sizes: &a [8, *a]\n")
    peak, code, err = measured("validate", "rec.yaml", cwd=tmp_path, timeout=60)
    assert code == 2 and "rec.yaml:2: its YAML aliases expand to more than 100,000 values" in one_error_line(err)
    assert peak < SPEC_BOUND_KIB, peak


@pytest.mark.process
def test_aliases_within_the_budget_are_fine(tmp_path):
    (tmp_path / "ok.yaml").write_text("name: ok\nbatch_sizes: &grid [8, 16]\noverrides: &o {a: 1}\n"
                                      "overnight: {max_steps: 100, overrides: *o}\n")
    peak, code, err = measured("validate", "ok.yaml", cwd=tmp_path)
    assert code == 0, err


@pytest.mark.process
def test_a_grid_of_two_million_rungs_is_refused_before_it_is_expanded(tmp_path):
    (tmp_path / "grid.yaml").write_text("name: grid\nbatch_sizes: {start: 8, stop: 2000000, step: 1}\n")
    peak, code, err = measured("validate", "grid.yaml", cwd=tmp_path, timeout=60)
    line = one_error_line(err)
    assert code == 2 and "grid.yaml:2: batch_sizes: 1,999,993 rungs, more than the 1,000" in line
    assert "coarser step" in line and "refine: bisect or model" in line
    assert peak < SPEC_BOUND_KIB, peak
    # a list that long is refused the same way
    (tmp_path / "list.yaml").write_text("name: grid\nbatch_sizes: [" + ", ".join(map(str, range(1, 1502))) + "]\n")
    _, code, err = measured("validate", "list.yaml", cwd=tmp_path)
    assert code == 2 and "1,501 rungs" in one_error_line(err)


@pytest.mark.process
def test_a_2_gib_spec_file_is_refused_unread(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:  # sparse: no disk is used
        handle.truncate(2 << 30)
    peak, code, err = measured("validate", "big.yaml", cwd=tmp_path, timeout=60)
    assert code == 2 and "big.yaml: 2048.0 MiB, over the 1 MiB a spec may be" in one_error_line(err)
    assert peak < SPEC_BOUND_KIB, peak
    # a stream is read no further than the limit either
    _, code, err = measured("validate", "/dev/zero", cwd=tmp_path, timeout=60)
    assert code == 2 and "/dev/zero: more than 1 MiB" in one_error_line(err)


@pytest.mark.process
def test_yaml_nested_past_the_stack_and_binary_files_are_one_line(tmp_path):
    (tmp_path / "deep.yaml").write_text("name: x\nbatch_sizes: [8]\noverrides: {a: " + "[" * 100_000 + "]" * 100_000
                                        + "}\n")
    _, code, err = measured("validate", "deep.yaml", cwd=tmp_path, timeout=60)
    assert code == 2 and "deep.yaml: not valid YAML for a spec: nested too deeply" in one_error_line(err)
    (tmp_path / "bin.yaml").write_bytes(b"name: x\n\xff\xfe\x00")
    _, code, err = measured("validate", "bin.yaml", cwd=tmp_path)
    assert code == 2 and "bin.yaml: not UTF-8 text" in one_error_line(err)


# ---- what a trainer prints ----------------------------------------------------------------------------------------
@pytest.mark.pure
def test_a_line_longer_than_the_limit_is_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_mod, "MAX_LINE_BYTES", 100)
    monkeypatch.setattr(metrics_mod, "CHUNK_BYTES", 64)
    path = tmp_path / "log.txt"
    reader = _Lines(path)
    with open(path, "wb") as log:
        log.write(b"first\nsecond par")
        log.flush()
        assert reader.read() == ["first"]
        log.write(b"t\n" + b"y" * 250)  # a line that grows past the limit without a newline
        log.flush()
        got = []
        for _ in range(6):
            got += reader.read()
        assert got == ["second part"] and reader.skipping and reader.skipped == 1 and reader.partial == b""
        log.write(b"y" * 30 + b"\nthird\n" + b"z" * 150 + b"\nfourth\n")  # its end; then a long line whole
        log.flush()
        got = []
        for _ in range(6):
            got += reader.read()
    assert got == ["third", "fourth"] and reader.skipped == 2 and not reader.skipping


def _chatty_spec(tmp_path: Path, args: list[str], regex: bool) -> Path:
    spec = tmp_path / "chatty.yaml"
    regex_part = "metrics_regex: {val_loss: 'val_loss ([0-9.]+)', step_per_s: 'time ([0-9.]+)ms'}\n" if regex else ""
    spec.write_text(f"name: chatty\ncommand: {json.dumps([sys.executable, str(CHATTY), *args])}\n"
                    f"batch_sizes: [1]\nprobe: {{keys: {{max_steps: null, check_interval: null, "
                    f"limit_batches: null}}}}\nbatch_size_key: bs\nwarmup: false\nmemory: {{rss_limit: 4GiB}}\n"
                    f"timeout_s: 600\nruns_dir: {tmp_path / 'runs'}\n{regex_part}")
    return spec


def _record(tmp_path: Path) -> dict:
    run = sorted((tmp_path / "runs" / "chatty").iterdir())[-1]
    return json.loads((run / "bs-0001" / "result.json").read_text())


@pytest.mark.process
def test_a_500_mb_line_without_a_newline_leaves_the_monitor_small(tmp_path):
    # written at 30 MiB/s, so the log reader (metrics_regex) keeps up and sees the whole line go by
    spec = _chatty_spec(tmp_path, ["line_mb=500", "rate_mb_s=30", "protocol=0"], regex=True)
    peak, code, err = measured("run", str(spec), "--skip-preflight", cwd=tmp_path, timeout=300)
    assert code == 0, err
    rec = _record(tmp_path)
    assert rec["outcome"] == "ok" and rec["metrics"]["skipped_lines"] == 1 and rec["metrics"]["unread_bytes"] == 0
    assert "skipped 1 line(s) of its output over 1 MiB" in rec["evidence"]["detail"]
    assert rec["metrics"]["source"] == "regex" and rec["metrics"]["val_loss"] == 0.5  # the line after it is read
    assert peak < RUN_BOUND_KIB, peak


@pytest.mark.process
def test_a_gigabyte_of_short_lines_leaves_the_monitor_small(tmp_path):
    # every line matches a regex: the values kept per metric are capped, and what the reader could not follow
    # before the trainer exited is given up, bar the log's end
    spec = _chatty_spec(tmp_path, ["lines_mb=1024", "protocol=0"], regex=True)
    peak, code, err = measured("run", str(spec), "--skip-preflight", cwd=tmp_path, timeout=300)
    assert code == 0, err
    rec = _record(tmp_path)
    assert rec["outcome"] == "ok" and rec["metrics"]["source"] == "regex" and rec["metrics"]["val_loss"] == 0.5
    assert rec["metrics"]["unread_bytes"] > 0 and "ran too far ahead" in rec["evidence"]["detail"]
    assert peak < RUN_BOUND_KIB, peak
    (Path(sorted((tmp_path / "runs" / "chatty").iterdir())[-1]) / "bs-0001" / "log.txt").unlink()  # 1 GiB


# ---- a disk that fills --------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path):
    """A 96 KiB tmpfs (root mounts it; CI runs as root, so there it must work), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.process
def test_a_full_disk_stops_the_run_in_one_line_and_resume_finishes_it(tmp_path, tiny_fs):
    memhog = ROOT / "tests" / "fixtures" / "memhog.py"
    spec = tmp_path / "full.yaml"
    spec.write_text(f"name: full\ncommand: {json.dumps([sys.executable, str(memhog), 'base_mb=20', 'mb_per_sample=1', 'step_s=0.05'])}\n"
                    f"batch_sizes: [1, 2, 3, 4, 5, 6]\nprobe: {{max_steps: 40, check_interval: 20, limit_batches: 1}}\n"
                    f"memory: {{rss_limit: 2GiB}}\nwarmup: false\nruns_dir: {tiny_fs / 'runs'}\n")
    res = subprocess.run([sys.executable, "-m", "hlrp_ladder", "run", "full.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 6, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr
    assert "no space left writing " + str(tiny_fs) in errors[0] and "MiB free on its filesystem" in errors[0]
    run = next((tiny_fs / "runs" / "full").iterdir())
    state = json.loads((run / "ladder.json").read_text())
    assert state["status"] == "interrupted" and state["exit_code"] == 6 and "--resume" in state["reason"]
    kept = {p.name for p in run.glob("bs-*") if (p / "result.json").exists()}
    assert kept and all(json.loads((run / name / "result.json").read_text())["outcome"] == "ok" for name in kept)
    subprocess.run(["mount", "-o", "remount,size=32m", str(tiny_fs)], check=True)  # room again
    res = subprocess.run([sys.executable, "-m", "hlrp_ladder", "run", "full.yaml", "--resume"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "pick: bs=6" in res.stdout, res.stderr[-3000:]
    for name in kept:  # nothing recorded before the disk filled was lost or run again
        assert f"resume: bs={int(name[3:])} ok" in res.stderr
    assert json.loads((run / "ladder.json").read_text())["status"] == "done"


@pytest.mark.pure
def test_the_values_kept_per_metric_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_mod, "MAX_VALUES", 5)
    log = tmp_path / "log.txt"
    log.write_text("".join(f"iter {i}: time 10ms\nval_loss {i}.0\n" for i in range(100)))
    live = metrics_mod.LiveMetrics(tmp_path / "metrics.jsonl", log, metrics_mod.MetricsPatterns(
        val_loss=r"val_loss ([0-9.]+)", step_per_s=r"time ([0-9.]+)ms"), start_wall=0.0, check_interval=10)
    live.poll(1.0)
    assert [len(v) for v in live.found.values()] == [5, 5]
    m = live.finish([(0.5, 100, None, None)], 2.0)
    assert [p.val_loss for p in m.val_points] == [95.0, 96.0, 97.0, 98.0, 99.0]  # the latest are kept,
    assert [p.step for p in m.val_points] == [960, 970, 980, 990, 1000]           # numbered as they came

"""Stress confirmation and the forecast with real processes: memory that grows per validation, a plateau, a spike."""
import json
import sys
from pathlib import Path

import pytest

from tests.helpers import MEMHOG, cli

pytestmark = pytest.mark.process


def spec(tmp_path: Path, *, args, cap, stress="{max_steps: 220, check_interval: 50, limit_batches: 2}",
         overnight="", batch_sizes="[2, 4, 8]") -> Path:
    argv = [sys.executable, str(MEMHOG), "step_s=0.005", *args]
    path = tmp_path / "s.yaml"
    path.write_text(
        f"name: st\ncommand: {json.dumps(argv)}\nbatch_sizes: {batch_sizes}\n"
        f"probe: {{max_steps: 35, check_interval: 30, limit_batches: 1}}\nstress: {stress}\n"
        f"memory: {{cap: {cap}, rss_limit: 4GiB, sample_interval_s: 0.05}}\n{overnight}"
        f"runs_dir: {tmp_path / 'runs'}\ntimeout_s: 60\n")
    return path


def records(tmp_path: Path) -> dict[str, dict]:
    run = sorted((tmp_path / "runs" / "st").iterdir())[-1]
    return {p.parent.name: json.loads(p.read_text()) for p in run.glob("bs-*/result.json")}


def test_stress_kill_rejects_the_candidate_and_the_next_lower_rung_is_stressed(tmp_path, need_cgroup):
    # One-val: 1 validation, stress: 4, each keeping 25 MiB more. bs=8 fits one-val (~160 MiB) but not
    # stress (~235 MiB) under a 220 MiB cap; bs=4 holds in stress (~195 MiB).
    path = spec(tmp_path, args=["base_mb=50", "mb_per_sample=10", "growth_mb_per_val=25"], cap="220MiB")
    res = cli("run", str(path), cwd=tmp_path, timeout=240)
    assert res.returncode == 0, res.stderr
    assert "pick: bs=4" in res.stdout
    assert "Rejected: bs=8 stress oom_killed at" in res.stdout
    assert "Confirmed by the stress phase (220 steps, validation every 50 over 2 batches): bs=4 stress ok" \
        in res.stdout
    recs = records(tmp_path)
    assert sorted(recs) == ["bs-0002", "bs-0004", "bs-0004-stress", "bs-0008", "bs-0008-stress"]
    assert recs["bs-0008-stress"]["outcome"] == "oom_killed" and recs["bs-0008"]["outcome"] == "ok"
    assert len(recs["bs-0004-stress"]["metrics"]["val_points"]) == 4
    state = json.loads((sorted((tmp_path / "runs" / "st").iterdir())[-1] / "ladder.json").read_text())
    assert state["pick"] == 4 and state["confirmed_by"] == "stress"


def test_growth_that_survives_stress_but_not_the_long_run_is_forecast_oom(tmp_path, need_cgroup):
    # 6 MiB more per validation: 8 validations in stress are fine, 1000 in the overnight run are not.
    path = spec(tmp_path, args=["base_mb=40", "mb_per_sample=5", "growth_mb_per_val=6"], cap="300MiB",
                stress="{max_steps: 400, check_interval: 50, limit_batches: 2}", batch_sizes="[2, 4]",
                overnight="overnight: {max_steps: 50000, check_interval: 50}\n")
    res = cli("run", str(path), cwd=tmp_path, timeout=240)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "no stable rung: every candidate was rejected." in res.stderr
    recs = records(tmp_path)
    for name in ("bs-0004-stress", "bs-0002-stress"):
        rec = recs[name]
        assert rec["outcome"] == "forecast_oom", rec["evidence"]
        fc = rec["forecast"]
        assert fc["kind"] == "growth" and 4 < fc["slope_mib_per_cycle"] < 8, fc
        assert fc["long_run_cycles"] == 1000 and fc["fits"] is False
        assert fc["predicted_peak_bytes"] > 300 * 2**20
        assert fc["reason"].startswith(f"+{fc['slope_mib_per_cycle']:.0f} MiB per validation -> ")
        assert fc["reason"].endswith("after 1000 cycles > the 300 MiB cap")
    assert "bs=4 stress forecast_oom: +" in res.stderr


def test_a_spike_on_a_plateau_is_confirmed_with_its_peak(tmp_path, need_cgroup):
    path = spec(tmp_path, args=["base_mb=40", "mb_per_sample=5", "spike_mb=40", "spike_at=120", "spike_s=0.3"],
                cap="300MiB", stress="{max_steps: 400, check_interval: 50, limit_batches: 2}",
                batch_sizes="[2, 4]", overnight="overnight: {max_steps: 50000, check_interval: 50}\n")
    res = cli("run", str(path), cwd=tmp_path, timeout=240)
    assert res.returncode == 0, res.stderr
    rec = records(tmp_path)["bs-0004-stress"]
    fc = rec["forecast"]
    assert rec["outcome"] == "ok" and fc["kind"] == "plateau" and fc["fits"] is True
    assert fc["predicted_peak_bytes"] == fc["observed_peak_bytes"] >= (40 + 20 + 40) * 2**20
    assert "memory plateau" in res.stdout and "Confirmed by the stress phase" in res.stdout

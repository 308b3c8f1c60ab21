"""compare that can answer "is it 5 % faster?": steady-state throughput per run, the effect each pair can detect,
rounds added until each pair is decided (Bonferroni over the looks), and no verdict from identical repeats."""
import json
import random
import sys
from pathlib import Path

import pytest

from hlrp_ladder.compare import matrix
from hlrp_ladder.probe.metrics import steady_rate
from hlrp_ladder.spec.sections import CompareSpec
from tests.helpers import MEMHOG, cli

WORDS = ("faster", "slower")


# ---- steady-state throughput ----------------------------------------------------------------------------------
@pytest.mark.pure
def test_steady_rate_leaves_out_the_start_up_and_the_windows_with_a_validation():
    # train events every 10 steps; the first window is slow (start-up), the one holding the validation at step
    # 50 took 5 s instead of 1; every other window is 10 steps in 1 s
    train = [(0, 0.0), (10, 4.0)] + [(10 * k, 4.0 + (k - 1)) for k in range(2, 6)] + \
            [(60, 12.0)] + [(10 * k, 12.0 + (k - 6)) for k in range(7, 12)]
    vals = [(50, 8.5)]
    rate, windows, cv = steady_rate(train, vals)
    # windows: 0-10 (start-up, left out), 10-20 .. 40-50 (4 of 1 s), 50-60 (holds the validation: out),
    # 60-70 .. 100-110 (5 of 1 s): 9 windows of 10 steps per second
    assert (rate, windows, cv) == (10.0, 9, 0.0)
    # without times the validation is placed by its step: after the train event of the same step
    no_time = [(s, t) for s, t in train]
    assert steady_rate(no_time, [(50, None)])[:2] == (10.0, 9)
    assert steady_rate([(10, None), (20, None)], []) == (None, 0, None)  # no times: nothing to say


# ---- the detectable effect ------------------------------------------------------------------------------------
@pytest.mark.pure
def test_the_detectable_effect_and_the_runs_a_target_needs_match_a_hand_computation():
    # variances 4 and 4, 4 runs a side, mean 100: se = sqrt(4/4 + 4/4) = 1.4142, Welch df = 2^2 / (1/3 + 1/3) = 6;
    # t_0.975(6) = 2.447 and t_0.80(6) = 0.906 (Student-t table): MDE = 3.353 x 1.4142 = 4.741 % of 100
    assert matrix.mde_pct(4.0, 4.0, 4, 4, 100.0, 0.95) == pytest.approx(4.741, abs=0.005)
    # for 3 %: n = 8 gives (2.145 + 0.868) x sqrt(8/8) = 3.013 > 3, n = 9 gives (2.120 + 0.865) x 0.9428 = 2.814
    assert matrix.runs_needed(4.0, 4.0, 100.0, 0.95, 3.0) == 9
    assert matrix.runs_needed(4.0, 4.0, 100.0, 0.95, 0.01) is None  # more than 100 a side
    d = matrix.delta([98.0, 100.0, 102.0, 100.0], [101.0, 99.0, 103.0, 97.0], WORDS, 0.95, 5.0)
    assert d.mde_pct is not None and d.runs_needed is not None and d.verdict == "within noise"


@pytest.mark.pure
def test_a_pair_is_decided_equivalent_or_undecided_against_the_target():
    slower = matrix.delta([100.0, 101.0, 99.0, 100.0], [91.0, 92.0, 93.0, 92.0], WORDS, 0.99, 5.0)
    assert matrix.decision(slower, 5.0) == "decided"
    assert matrix.decision_text(slower, 5.0, 8).startswith("slower by 8.0 % [")
    same = matrix.delta([100.0, 101.0, 99.0, 100.0], [100.5, 99.5, 100.0, 100.2], WORDS, 0.99, 5.0)
    assert matrix.decision(same, 5.0) == "equivalent"
    assert matrix.decision_text(same, 5.0, 8) == "within ±5 %: no difference that large"
    wide = matrix.delta([100.0, 110.0], [95.0, 104.0], WORDS, 0.99, 5.0)
    assert matrix.decision(wide, 5.0) == "undecided"
    text = matrix.decision_text(wide, 5.0, 8)
    assert text.startswith("undecided after 2 runs a side (max_repeats 8): ±") and "5 % needs about" in text
    assert matrix.decision(matrix.delta([1.0, 1.0], [2.0, 2.0], WORDS), 5.0) == "final"  # identical repeats


@pytest.mark.pure
def test_bonferroni_over_the_looks_a_compare_may_take():
    plain = CompareSpec(batch_size=8, variants={"a": {}}, repeats=2)
    assert (matrix.looks(plain), matrix.confidence(plain)) == (1, pytest.approx(0.95))
    target = CompareSpec(batch_size=8, variants={"a": {}}, repeats=2, target_effect="5%", max_repeats=8)
    assert (matrix.looks(target), matrix.confidence(target)) == (7, pytest.approx(1 - 0.05 / 7))


def _sequential(rng: random.Random, true_pct: float, target: float, repeats: int, most: int, cv: float) -> str:
    """One synthetic compare of two variants: rounds added while the pair is undecided, as the runner does."""
    conf = 1 - 0.05 / (most - repeats + 1)
    a = [rng.gauss(100.0, 100.0 * cv) for _ in range(repeats)]
    b = [rng.gauss(100.0 * (1 + true_pct / 100), 100.0 * cv) for _ in range(repeats)]
    while True:
        d = matrix.delta(a, b, WORDS, conf)
        state = matrix.decision(d, target)
        if state != "undecided" or len(a) >= most:
            return d.verdict if state == "decided" else state
        a.append(rng.gauss(100.0, 100.0 * cv))
        b.append(rng.gauss(100.0 * (1 + true_pct / 100), 100.0 * cv))


@pytest.mark.pure
def test_with_the_sequential_rounds_a_false_faster_or_slower_stays_under_5_percent():
    rng = random.Random(20261201)
    for cv in (0.02, 0.05, 0.10):  # within-variant noise from quiet to loud
        outcomes = [_sequential(rng, 0.0, 5.0, 2, 8, cv) for _ in range(1000)]
        false = sum(o in ("faster", "slower") for o in outcomes) / len(outcomes)
        assert false <= 0.05, (cv, false)
    # and the rounds have power: a true 8 % slowdown at 2 % noise is called slower nearly always
    found = [_sequential(rng, -8.0, 5.0, 2, 8, 0.02) for _ in range(300)]
    assert sum(o == "slower" for o in found) / len(found) >= 0.9


# ---- real runs ----------------------------------------------------------------------------------------------------
def power_compare(tmp_path: Path, extra: str = "") -> Path:
    argv = [sys.executable, str(MEMHOG), "base_mb=30", "mb_per_sample=1", "step_s=0.02"]
    path = tmp_path / "power.yaml"
    path.write_text(f"""name: power
command: {json.dumps(argv)}
batch_sizes: [8]
memory: {{rss_limit: 4GiB, sample_interval_s: 0.05}}
executor: {{max_parallel: 2}}
runs_dir: {tmp_path / 'runs'}
timeout_s: 120
compare:
  batch_size: 8
  max_steps: 150
  check_interval: 50
  repeats: 2
  warmup: false
{extra}  variants:
    base: {{}}
    slower: {{step_s: 0.02174}}        # 8 % fewer steps per second
    same: {{message: hello}}           # changes nothing that costs anything
""")
    return path


@pytest.mark.process
def test_rounds_are_added_until_the_slower_variant_is_called_and_the_same_one_is_within_the_target(tmp_path):
    spec = power_compare(tmp_path, "  target_effect: 5%\n  max_repeats: 8\n  seed_key: seed\n")
    res = cli("compare", str(spec), "--skip-preflight", cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    run = sorted((tmp_path / "runs" / "power").iterdir())[-1]
    rep = cli("report", str(run), "--format", "json", "--out", str(tmp_path / "rep"))
    data = json.loads(rep.stdout)
    assert 2 <= data["rounds"] <= 8 and data["correction"] == "Bonferroni over 7 looks (one per round allowed)"
    pairs = {p["b"]: p for p in data["pairs"]}
    slow = pairs["slower"]
    assert slow["decided"] == "decided" and slow["throughput"].startswith("slower by ")
    band = slow["metrics"]["samples_per_s"]
    assert band["high_pct"] < 0 and -12 < band["delta_pct"] < -4  # the band leaves out zero
    assert pairs["same"]["decided"] == "equivalent"
    assert pairs["same"]["throughput"] == "within ±5 %: no difference that large"
    assert all(p["metrics"]["samples_per_s"]["mde_pct"] is not None for p in data["pairs"])
    # every run is a steady-state measurement, and each repeat got its own seed
    assert all(r["metrics"]["steady_windows"] >= 20 for r in data["runs"])
    argv = json.loads((run / "base-r2" / "argv.json").read_text())["argv"]
    assert "seed=2" in argv
    md = cli("report", str(run), "--out", str(tmp_path / "rep"))
    assert md.returncode == 0
    text = next((tmp_path / "rep").glob("*.md")).read_text()
    assert "Bonferroni-corrected" in text and "% detectable; 5 % needs " in text


@pytest.mark.process
def test_repeats_1_without_a_target_still_says_no_noise_band(tmp_path):
    spec = power_compare(tmp_path).read_text().replace("repeats: 2", "repeats: 1")
    (tmp_path / "power.yaml").write_text(spec)
    res = cli("compare", "power.yaml", "--skip-preflight", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    run = sorted((tmp_path / "runs" / "power").iterdir())[-1]
    data = json.loads(cli("report", str(run), "--format", "json", "--out", str(tmp_path / "rep")).stdout)
    assert data["rounds"] == 1 and all(p["throughput"] == "no noise band" for p in data["pairs"])

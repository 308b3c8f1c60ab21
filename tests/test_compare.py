"""compare: the variant matrix with real runs of the memory-hog fixture (known costs per variant), the deltas with
their noise bands (pure), the apples-to-apples flags, the report in md/json/csv, resume, and preflight naming a
blocked variant."""
import json
import signal
import sys
from pathlib import Path

import pytest

from hlrp_ladder.compare import matrix as compare
from hlrp_ladder.compare.runner import run_request
from hlrp_ladder.run.store import RunStore
from hlrp_ladder.search.plan import resolve
from hlrp_ladder.spec import parse_spec
from tests.helpers import MEMHOG, cli, start_until

# ---- pure: the deltas and their noise bands ----------------------------------------------------------------------
WORDS = ("faster", "slower")


@pytest.mark.pure
def test_a_clear_difference_is_called_and_its_band_leaves_out_zero():
    d = compare.delta([100.0, 102.0, 98.0], [50.0, 51.0, 49.0], WORDS)
    assert d.verdict == "slower" and d.delta == pytest.approx(-50.0) and d.delta_pct == pytest.approx(-50.0)
    assert d.low_pct < d.delta_pct < d.high_pct < 0


@pytest.mark.pure
def test_welch_band_matches_a_hand_computed_example():
    # a = [9, 10, 11, 10]: mean 10, sample variance 2/3; b = [10, 12, 14, 12]: mean 12, variance 8/3; n = 4 each.
    # se = sqrt((2/3 + 8/3) / 4) = sqrt(5/6) = 0.912871; Welch df = (5/6)^2 / ((1/6)^2/3 + (2/3)^2/3) = 4.411765;
    # t_0.975 at that df = 2.6772 (between the table's 2.776 at df 4 and 2.571 at df 5; R's qt(0.975, 4.411765));
    # half-width 2.4439: the difference 2 lies in [-0.4439, 4.4439], i.e. [-4.44, 44.44] % of a's mean 10.
    d = compare.delta([9.0, 10.0, 11.0, 10.0], [10.0, 12.0, 14.0, 12.0], WORDS)
    assert d.low_pct == pytest.approx(-4.439, abs=0.01) and d.high_pct == pytest.approx(44.439, abs=0.01)
    assert d.verdict == "within noise"


@pytest.mark.pure
def test_two_repeats_a_side_get_the_exact_quantile_not_an_interpolated_one():
    # n = 2 a side with equal variances: df = 2 exactly, t_0.975(2) = 4.303 (the table). Variances 2 each:
    # se = sqrt(2/2 + 2/2) = 1.414214, half-width 6.0849. The difference 7 is called with a band [0.915, 13.085],
    # i.e. [9.15, 130.85] % of a's mean 10.
    d = compare.delta([9.0, 11.0], [16.0, 18.0], WORDS)
    assert d.verdict == "faster"
    assert d.low_pct == pytest.approx(9.151, abs=0.01) and d.high_pct == pytest.approx(130.849, abs=0.01)
    # unequal variances put df between 1 and 2, where the old interpolated table was too wide: here variances
    # 0.02 and 2 give df = 1.0200 and an exact t of 12.13 (R's qt(0.975, 1.02); the old table interpolated 12.54)
    e = compare.delta([10.0, 10.2], [12.0, 14.0], WORDS)
    se = (0.02 / 2 + 2 / 2) ** 0.5
    assert e.high_pct - e.low_pct == pytest.approx(2 * 100 * 12.13 * se / 10.1, rel=0.002)


@pytest.mark.pure
def test_identical_repeats_measure_no_noise_and_call_nothing():
    d = compare.delta([1.9, 1.9], [1.86, 1.86], ("higher loss", "lower loss"))
    assert d.verdict == "identical repeats" and d.low_pct is None and d.delta_pct == pytest.approx(-2.105, abs=0.01)
    # one side without spread is no better: its noise is unknown, not zero
    assert compare.delta([1.9, 1.9], [1.86, 1.84], ("higher loss", "lower loss")).verdict == "identical repeats"
    assert "vary the seed" in compare.decision_text(d, 5.0, 8)


@pytest.mark.pure
def test_noise_is_within_noise_and_one_run_has_no_band():
    assert compare.delta([100.0, 104.0, 96.0], [101.0, 97.0, 103.0], WORDS).verdict == "within noise"
    single = compare.delta([100.0], [120.0], WORDS)
    assert single.verdict == "no noise band" and single.low_pct is None and single.delta_pct == pytest.approx(20)
    assert compare.delta([], [1.0], WORDS).verdict == "no data"


SEED = """name: seed
batch_sizes: [48]
overrides: {data: oxe_local_spe0}
compare:
  batch_size: 48
  variants:
    gcs_lim4:    {data.adapter.tf.tfds_read.source: gcs, training.validation.limit_batches: 4}
    gcs_lim20:   {data.adapter.tf.tfds_read.source: gcs, training.validation.limit_batches: 20}
    gcs_default: {data.adapter.tf.tfds_read.source: gcs}
    auto_default: {data.adapter.tf.tfds_read.source: auto, data: oxe_local_language_table}
  pairs:
    - {a: gcs_default, b: auto_default, about: [data.adapter.tf.tfds_read.source]}
    - {a: gcs_lim20, b: gcs_default, about: [training.validation.limit_batches]}
"""


@pytest.mark.pure
def test_apples_to_apples_lists_every_difference_beyond_what_a_pair_is_about():
    spec = parse_spec(SEED, "seed.yaml")
    source, limit = compare.pairs(spec, 48)
    assert source.extra == ["data"]
    assert source.extra_text == "also differs in data=oxe_local_language_table (gcs_default: oxe_local_spe0)"
    assert limit.extra == [] and limit.extra_text == ""
    # by default every variant against the first, about exactly what differs: nothing extra to flag
    spec.compare.pairs = None
    default = compare.pairs(spec, 48)
    assert [(p.a, p.b) for p in default] == [("gcs_lim4", "gcs_lim20"), ("gcs_lim4", "gcs_default"),
                                             ("gcs_lim4", "auto_default")]
    assert all(not p.extra for p in default)
    assert default[2].about == ["data", "data.adapter.tf.tfds_read.source", "training.validation.limit_batches"]


@pytest.mark.pure
def test_a_variant_wins_over_the_recipe_and_the_spec():
    spec = parse_spec(SEED, "seed.yaml")
    argv, env = compare.effective(spec, "gcs_lim4", 48)
    assert "training.validation.limit_batches=4" in argv and "training.max_steps=1000" in argv
    assert argv[-1] == "data.loader.batch_size=48"
    argv, _ = compare.effective(spec, "gcs_default", 48)
    assert not any(a.startswith("training.validation.limit_batches=") for a in argv)  # the trainer's default


# ---- real runs ---------------------------------------------------------------------------------------------------
def hog_compare(tmp_path: Path, *, repeats=3, parallel=2, extra="", name="cmp") -> Path:
    argv = [sys.executable, str(MEMHOG), "base_mb=40", "mb_per_sample=2", "step_s=0.01"]
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""name: {name}
command: {json.dumps(argv)}
batch_sizes: [8]
memory: {{rss_limit: 4GiB, sample_interval_s: 0.05}}
executor: {{max_parallel: {parallel}}}
runs_dir: {tmp_path / 'runs'}
timeout_s: 60
{extra}compare:
  batch_size: 8
  max_steps: 60
  check_interval: 20
  repeats: {repeats}
  variants:
    base: {{}}
    slow: {{step_s: 0.02}}              # half the steps per second
    bigger: {{base_mb: 160}}            # 120 MiB more
    same: {{message: hello}}            # changes nothing that costs anything
  pairs:
    - {{a: base, b: slow, about: [step_s]}}
    - {{a: base, b: bigger, about: [base_mb]}}
    - {{a: base, b: same, about: [message]}}
    - {{a: slow, b: bigger, about: [base_mb]}}   # also differs in step_s: flagged
""")
    return path


@pytest.mark.process
def test_the_matrix_runs_and_the_report_finds_the_known_costs(tmp_path):
    spec = hog_compare(tmp_path)
    assert "  slow: " in cli("validate", str(spec)).stdout  # each variant's argv
    res = cli("compare", str(spec), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    run = sorted((tmp_path / "runs" / "cmp").iterdir())[-1]
    assert run.name.endswith("-compare")
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == sorted(
        [f"{v}-r{k}" for v in ("base", "slow", "bigger", "same") for k in (1, 2, 3)] + ["warmup"])
    warm = json.loads((run / "warmup" / "result.json").read_text())
    assert warm["variant"] == "base" and warm["repeat"] == 0 and warm["metrics"]["last_step"] == 20
    rep = cli("report", str(run), "--format", "json", "--out", str(tmp_path / "rep"))
    assert rep.returncode == 0, rep.stderr
    data = json.loads(rep.stdout)
    assert [v["name"] for v in data["variants"]] == ["base", "slow", "bigger", "same"]
    assert len(data["runs"]) == 12 and all(r["outcome"] == "ok" for r in data["runs"])
    pairs = {(p["a"], p["b"]): p for p in data["pairs"]}
    slow = pairs[("base", "slow")]["metrics"]
    assert slow["samples_per_s"]["verdict"] == "slower" and -60 < slow["samples_per_s"]["delta_pct"] < -40
    assert slow["step_per_s"]["verdict"] == "slower"
    bigger = pairs[("base", "bigger")]["metrics"]["working_set_bytes"]
    # the fixture allocates exact sizes: its working set can come out identical in every repeat, and a zero
    # variance is never a verdict (the delta is still shown)
    assert 110 * 2**20 < bigger["delta"] < 130 * 2**20
    assert bigger["verdict"] == "more memory" or (bigger["verdict"] == "identical repeats" and
                                                  bigger["low_pct"] is None)
    same = pairs[("base", "same")]["metrics"]
    # the fixture's loss is deterministic: identical repeats measure no noise, and no verdict is drawn from that
    assert same["val_loss"]["verdict"] == "identical repeats" and abs(same["samples_per_s"]["delta_pct"]) < 10
    assert pairs[("slow", "bigger")]["extra_differences"] == ["step_s"]
    assert pairs[("base", "slow")]["extra_differences"] == []
    md_res = cli("report", str(run), "--out", str(tmp_path / "rep"))
    md = next((tmp_path / "rep").glob("*.md")).read_text()
    assert "**bigger vs slow** is not apples to apples: also differs in step_s=(unset) (slow: 0.02)" in md
    assert "**slower**" in md and ("**more memory**" in md or "**identical repeats**" in md) and "within noise" in md
    assert "val loss @20" in md and (tmp_path / "rep" / f"cmp-{run.name}.png").stat().st_size > 10_000
    csv = cli("report", str(run), "--format", "csv", "--out", str(tmp_path / "rep")).stdout
    assert csv.splitlines()[0].startswith("variant,run,overrides,outcome")
    assert md_res.returncode == 0


@pytest.mark.process
def test_one_run_per_variant_says_no_noise_band(tmp_path):
    spec = hog_compare(tmp_path, repeats=1, parallel=1)
    assert cli("compare", str(spec), cwd=tmp_path, timeout=300).returncode == 0
    run = sorted((tmp_path / "runs" / "cmp").iterdir())[-1]
    data = json.loads(cli("report", str(run), "--format", "json", "--out", str(tmp_path / "rep")).stdout)
    assert {m["verdict"] for p in data["pairs"] for m in p["metrics"].values()} == {"no noise band"}
    cli("report", str(run), "--out", str(tmp_path / "rep"))
    assert "With `repeats: 1` there is no variance to estimate" in next((tmp_path / "rep").glob("*.md")).read_text()


@pytest.mark.process
def test_a_killed_compare_resumes_where_it_stopped(tmp_path, marker):
    spec = hog_compare(tmp_path, repeats=2, parallel=1)
    spec.write_text(spec.read_text().replace('"step_s=0.01"', f'"step_s=0.01", "{marker}"'))
    proc = start_until("compare", str(spec), cwd=tmp_path, pattern="runs/cmp/*/*/result.json", count=3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = cli("compare", str(spec), "--resume", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    run = sorted((tmp_path / "runs" / "cmp").iterdir())[-1]
    assert len(list(run.glob("*-r*/result.json"))) == 8 and (run / "warmup" / "result.json").exists()
    assert "compare: 8 runs of 4 variants at bs=8, 8 ok" in res.stdout


@pytest.mark.process
@pytest.mark.trainer
def test_preflight_names_the_blocked_variants_before_anything_starts(tmp_path, tiny_data):
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED.replace("overrides: {data: oxe_local_spe0}",
                                 f"overrides: {{data: oxe_local_spe0, paths.data_dir: {tiny_data}, "
                                 f"data.adapter.tf.tfds_read.source: local}}\n"
                                 f"runs_dir: {tmp_path / 'runs'}\npreflight: {{network_timeout_s: 1}}"))
    import socket
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=2).close()
        pytest.skip("GCS answers from here: nothing to block")  # not in CI: no network but the registries
    except OSError:
        pass
    res = cli("compare", str(seed), cwd=tmp_path, timeout=120)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "3 blocker(s) found" in res.stderr and "nothing was started" in res.stderr
    assert not (tmp_path / "runs").exists()  # nothing started, not a crash in the middle of the matrix
    found = {f["check"]: f for f in json.loads(cli("preflight", str(seed), "--json").stdout)}
    for variant in ("gcs_lim4", "gcs_lim20", "gcs_default"):
        assert found[f"variant {variant}: GCS"]["status"] == "fail"
        assert "would be read from GCS (tfds_read.source=gcs)" in found[f"variant {variant}: GCS"]["detail"]
    assert not [c for c in found if c.startswith("variant auto_default")]  # reads the local mirror


@pytest.mark.pure
def test_the_warm_up_run_gets_room_for_the_cache_and_the_counted_runs_the_cap(tmp_path):
    text = hog_compare(tmp_path).read_text().replace("rss_limit: 4GiB,", "rss_limit: 4GiB, cap: 200MiB,")
    spec = parse_spec(text, "cmp.yaml")
    plan = resolve(spec, 24 * 2**30)
    store = RunStore.create(spec, ["hlrp-ladder", "compare"], plan.to_json(), kind="compare")
    warm = run_request(spec, plan, store, 8, "base", 0, None)
    counted = run_request(spec, plan, store, 8, "base", 1, None)
    assert plan.cap_bytes == 200 * 2**20
    assert (warm.cap_bytes, counted.cap_bytes) == (400 * 2**20, 200 * 2**20)
    assert warm.folder.name == "warmup" and counted.folder.name == "base-r1"

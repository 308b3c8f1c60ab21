"""GPU memory in the policy, pure: headroom on the busiest device, an unread GPU, the GPU growth forecast,
`refine: model` on a GPU-bound curve, the clauses that name the binding memory, and the report's model that
never speaks past a failure. The curve is shaped on transformers' GPT-2 on the lent H200 (random init, fp32,
seq 1024, AdamW) as an earlier session's script measured it: NVML per-process 30.9 / 60.5 / 119.8 GiB at bs
16 / 32 / 64, CUDA OOM at bs=128 (139.8 GiB device). This session's examples/gpt2_train.py, which also
validates, measured about 10 % more (34.0 / 66.7 / 99.4 GiB at 16 / 32 / 48; reports/gpu/); the leak series
below is that run's."""
import pytest

from hlrp_ladder import search as policy
from hlrp_ladder.records import Outcome
from hlrp_ladder.report.analysis import memory_fit
from hlrp_ladder.report.view import RunView
from hlrp_ladder.search.forecast import assess
from hlrp_ladder.search.words import probe_clause
from tests.handmade import GIB, rec

pytestmark = pytest.mark.pure

H200, LIMIT = 139.8, 125.8            # the device, and memory.gpu.limit 90 % of it
GRID = [8, 16, 24, 32, 48, 64, 96, 128]


def gpt2_gib(bs: int) -> float:
    """GPT-2's GPU peak on the H200, interpolated from the measured 16/32/64 (1.85 GiB per sample)."""
    return 1.3 + 1.85 * bs


def gpu_rec(bs: int, outcome: str = "ok", limit: float = LIMIT, cap: float | None = None, **kw):
    gpu = kw.pop("gpu_gib", min(gpt2_gib(bs), cap or H200))
    return rec(bs, outcome, peak_gib=1.4 + 0.002 * bs, cap_gib=None, gpu_gib=gpu, gpu_limit_gib=limit,
               gpu_total_gib=cap or H200, gpu_cap_gib=cap, mechanism="mps" if cap else "", **kw)


def run(plan, fits, make=gpu_rec):
    """The sequential ladder against a GPU that fits ``fits(bs)``; the failures are cuda_oom."""
    records = []
    while (rung := policy.next_rung(plan, records)) is not None:
        ok = fits(rung.batch_size)
        records.append(make(rung.batch_size, "ok" if ok else "cuda_oom", phase=rung.phase, repeat=rung.repeat,
                            t=len(records) + 1.0, **({} if ok else {"exit_code": 1, "log_line": "torch.OutOfMemoryError: CUDA out of memory."})))
    return policy.verdict(plan, records), records


def test_the_pick_leaves_the_gpu_headroom_on_its_busiest_device():
    plan = policy.Plan(batch_sizes=GRID, limit_bytes=20 * GIB)
    # bs=64 fits the device but leaves 0.7 GiB under the 125.8 GiB limit, less than the 2 GiB headroom
    verdict, _ = run(plan, lambda bs: bs <= 64, lambda bs, o, **kw: gpu_rec(bs, o, gpu_gib=125.1 if bs == 64 else
                                                                        min(gpt2_gib(bs), H200), **kw))
    assert verdict.pick == 48
    assert "bs=64 GPU peak 125.10 GiB leaves 717 MiB free under the 125.80 GiB GPU limit, less than the 2.00 GiB GPU " \
           "headroom" in verdict.reason


def test_a_probe_whose_gpu_memory_was_not_read_cannot_confirm_a_pick():
    plan = policy.Plan(batch_sizes=[8, 16], limit_bytes=20 * GIB)
    records = [gpu_rec(8), gpu_rec(16, gpu_gib=None)]
    verdict = policy.verdict(plan, records)
    assert verdict.status == "inconclusive" and verdict.pick is None
    assert "bs=16 ok at" in verdict.reason and "its GPU memory could not be read" in verdict.reason


def test_a_cpu_record_without_a_gpu_is_judged_on_host_memory_as_before():
    plan = policy.Plan(batch_sizes=[8, 16], limit_bytes=2 * GIB, headroom_bytes=0)
    verdict = policy.verdict(plan, [rec(8), rec(16)])
    assert verdict.pick == 16 and "GPU" not in verdict.reason


def test_the_clauses_name_the_binding_memory_first():
    assert probe_clause(gpu_rec(64, gpu_gib=119.8)) == "bs=64 ok at 119.8 GiB GPU (host 1.83 GiB)"
    oom = gpu_rec(128, "cuda_oom", gpu_gib=139.8, exit_code=1, log_line="torch.OutOfMemoryError: CUDA out of memory.")
    assert probe_clause(oom).startswith("bs=128 cuda_oom at 139.8 GiB GPU (exit 1: torch.OutOfMemoryError")
    capped = gpu_rec(24, "cuda_oom", cap=40.0, limit=36.0, gpu_gib=39.5, exit_code=1, log_line="CUDA out of memory")
    assert "cuda_oom at 39.5 GiB GPU under an emulated 40.0 GiB GPU (mps)" in probe_clause(capped)
    breach = gpu_rec(128, "gpu_breach", gpu_gib=126.3)
    assert probe_clause(breach) == "bs=128 gpu_breach at 126.3 GiB GPU over the 125.8 GiB GPU limit"
    # a GPU barely used: host memory binds, and the GPU is named beside it
    assert probe_clause(gpu_rec(8, gpu_gib=0.5)) == "bs=8 ok at 1.70 GiB (512 MiB GPU)"


def test_refine_model_fits_the_gpu_peaks_and_leaves_the_rung_it_puts_over_the_limit_unprobed():
    plan = policy.Plan(batch_sizes=GRID, refine="model", limit_bytes=20 * GIB)
    verdict, records = run(plan, lambda bs: gpt2_gib(bs) <= H200)
    assert verdict.pick == 64
    assert [r.batch_size for r in records] == [8, 16, 64]
    assert "bs=96 was not probed: the GPU memory model" in verdict.reason
    assert "over the 125.8 GiB GPU limit less headroom" in verdict.reason


def test_refine_model_under_an_emulated_40_gib_gpu():
    plan = policy.Plan(batch_sizes=GRID, refine="model", limit_bytes=20 * GIB)
    make = lambda bs, o, **kw: gpu_rec(bs, o, cap=40.0, limit=36.0, **kw)  # noqa: E731
    verdict, records = run(plan, lambda bs: gpt2_gib(bs) <= 36.0, make)
    assert verdict.pick == 16, verdict.reason
    assert records[-1].batch_size == 24 and records[-1].outcome == Outcome.cuda_oom


def test_a_gpu_failure_the_gpu_line_put_clearly_under_the_limit_sends_the_model_to_bisection():
    plan = policy.Plan(batch_sizes=GRID, refine="model", limit_bytes=20 * GIB)
    # a knee: memory jumps past bs=32 (a kernel that needs a workspace), so bs=48 fails far below the line
    verdict, records = run(plan, lambda bs: bs <= 32)
    assert verdict.pick == 32
    # the line sends it to 64; the cuda_oom there, far under the line, hands over to bisection between 16 and 64
    # (32, then 48), which starts from that failure, never from the grid's top
    assert [r.batch_size for r in records] == [8, 16, 64, 32, 48]


def test_the_gpu_forecast_catches_a_leak_the_stress_probe_survived():
    cycle = 5
    vals = [(cycle * (i + 1), 1.0) for i in range(8)]
    leak = [8.0 + 0.12 * i for i in range(8)]                 # +120 MiB per validation on the GPU
    stress = rec(4, phase="stress", vals=vals, cap_gib=None, gpu_gib=leak[-1], gpu_limit_gib=LIMIT,
                 gpu_total_gib=H200, gpu_vals=leak)
    fc = assess(stress, cycle_steps=cycle, warmup=1, long_run_steps=50_000, long_run_interval=cycle,
                limit_bytes=int(LIMIT * GIB), limit_name="GPU limit", headroom_bytes=2 * GIB, gpu=True)
    assert fc.kind == "growth" and fc.fits is False and fc.domain == "gpu"
    assert fc.reason.startswith("GPU +123 MiB per validation -> ") and "> the 125.80 GiB GPU limit" in fc.reason
    host = assess(stress, cycle_steps=cycle, warmup=1, long_run_steps=50_000, long_run_interval=cycle,
                  limit_bytes=20 * GIB, limit_name="soft limit", headroom_bytes=0)
    assert host.kind == "plateau" and host.fits is True
    stress.gpu_forecast, stress.forecast, stress.outcome = fc, host, Outcome.forecast_oom
    assert policy.failed_on(stress) == "gpu"
    assert probe_clause(stress) == f"bs=4 stress forecast_oom: {fc.reason}"


def test_a_flat_gpu_series_is_a_plateau_that_fits():
    vals = [(5 * (i + 1), 1.0) for i in range(8)]
    flat = [30.9 + (0.01 if i % 2 else -0.01) for i in range(8)]
    stress = rec(16, phase="stress", vals=vals, cap_gib=None, gpu_gib=30.92, gpu_limit_gib=36.0, gpu_vals=flat)
    fc = assess(stress, cycle_steps=5, warmup=1, long_run_steps=20_000, long_run_interval=5,
                limit_bytes=36 * GIB, limit_name="GPU limit", headroom_bytes=2 * GIB, gpu=True)
    assert fc.kind == "plateau" and fc.fits is True and fc.reason.startswith("GPU memory plateau")


def test_the_report_model_does_not_put_the_limit_past_a_failure_it_saw():
    plan = policy.Plan(batch_sizes=[16, 32, 64, 128], limit_bytes=int(106.97 * GIB))
    records = [gpu_rec(16), gpu_rec(32), gpu_rec(64, gpu_gib=119.8),
               gpu_rec(128, "cuda_oom", gpu_gib=139.8, exit_code=1, log_line="CUDA out of memory")]
    view = RunView(store=None, state={}, spec=None, records=records, warnings=[],
                   verdict=policy.verdict(plan, records), plan=plan)
    model = memory_fit(view)
    assert model["gpu"]["largest_grid_bs"] == 64
    assert model["sentence"].startswith("GPU peak = ")               # the binding memory first
    host = model["sentence"].split("Peak = ")[1]
    # the GPU ran out, not the host: the host model is not "contradicted", its largest size stays below the failure
    assert "does not hold up" not in host and model["largest_grid_bs"] == 64
    assert "below the failure at bs=128 (GPU memory ran out first) is bs=64" in host
    # a failure of the host memory itself does contradict a host model that put the limit past it
    records[-1] = rec(128, "oom_killed", peak_gib=2.0, cap_gib=None)
    view = RunView(store=None, state={}, spec=None, records=records, warnings=[],
                   verdict=policy.verdict(plan, records), plan=plan)
    assert "does not hold up there" in memory_fit(view)["sentence"].split("Peak = ")[-1]


def test_a_leak_torchs_cache_hides_from_nvml_is_caught_by_torchs_allocated_memory():
    # measured on the H200 (examples/gpt2_train.py leak=true, bs=4, validation every 5 steps): NVML per process flat
    # at 11.04 GB (torch's reserved memory), torch's allocated memory +62.9 MB per validation
    allocated = [2920436224 + 62914560 * i for i in range(8)]
    stress = rec(4, phase="stress", vals=[(5 * (i + 1), 1.0) for i in range(8)], cap_gib=None, gpu_gib=11.0,
                 gpu_limit_gib=126.4, gpu_vals=[11.0] * 8)
    for point, value in zip(stress.metrics.val_points, allocated):
        point.torch_allocated_bytes = value
    fc = assess(stress, cycle_steps=5, warmup=1, long_run_steps=50_000, long_run_interval=5,
                limit_bytes=int(126.4 * GIB), limit_name="GPU limit", headroom_bytes=2 * GIB, gpu=True)
    assert fc.kind == "growth" and fc.fits is False and fc.slope_mib_per_cycle == 60
    assert fc.reason.startswith("GPU +60 MiB per validation of torch's allocated memory (the GPU's reserved memory "
                                "hides it until torch's cache is used up) -> ")
    # without torch's figures the same NVML series is a plateau: the protocol's gpu_allocated is what catches it
    for point in stress.metrics.val_points:
        point.torch_allocated_bytes = None
    assert assess(stress, cycle_steps=5, warmup=1, long_run_steps=50_000, long_run_interval=5,
                  limit_bytes=int(126.4 * GIB), limit_name="GPU limit", headroom_bytes=2 * GIB, gpu=True).kind == "plateau"


def _spec(**extra):
    import yaml

    from hlrp_ladder.spec import parse_spec
    return parse_spec(yaml.safe_dump({"name": "g", "command": ["x"], "batch_sizes": [1, 2], **extra}), "spec.yaml")


@pytest.mark.parametrize("extra, devices, expected", [
    ({}, None, (False, 0, "90%")),                                                  # judged where a GPU is seen
    ({"memory": {"gpu": {"limit": "80%", "cap": "40GiB"}}}, [1], (True, 1, "80%")),  # a local slot's own device
    ({"executor": {"kind": "slurm"}, "memory": {"gpu": {}}}, None, (True, 1, "90%")),  # SLURM: one by default
    ({"executor": {"kind": "slurm", "gpus_per_probe": 2}}, None, (False, 2, "90%")),
])
def test_each_probe_asks_for_its_gpus_and_slurm_allocates_them(extra, devices, expected):
    from hlrp_ladder.executors.slurm import SlurmExecutor
    from hlrp_ladder.records import ProbeRequest
    from hlrp_ladder.run.session import gpu_request

    spec = _spec(**extra)
    gpu = gpu_request(spec, devices)
    assert (gpu.required, gpu.count, gpu.limit) == expected and gpu.devices == devices
    req = ProbeRequest(folder="/tmp/x", batch_size=1, phase="ladder", argv=["x"], cwd="/tmp", rss_limit_bytes=1,
                       cgroup_name="c", gpu=gpu)
    args = SlurmExecutor(spec.executor.slurm).sbatch_args(req, "job")
    assert (f"--gres=gpu:{gpu.count}" in args) == bool(gpu.count)


def test_a_cap_is_a_size_not_a_share_of_the_real_gpu():
    from hlrp_ladder.spec import SpecError
    with pytest.raises(SpecError, match="memory.gpu.cap.*an emulated GPU is a size"):
        _spec(memory={"gpu": {"cap": "50%"}})

"""Measures the monitor, side by side in one run, and writes bench/RESULTS.md.

    python bench/monitor_bench.py [--quick]

- peak accuracy: a probe with a 300 ms allocation spike; the sampled peak against the kernel's own
  (VmHWM from wait4 for RSS, the cgroup's max_usage/peak for the charge). Goal: within 1 %.
- reaction: the soft limit is crossed by a spike -> the tree is dead (reaped). Goal: <= 0.25 s.
- monitor cost: the orchestrator's CPU while it watches a 16-process tree at the default 0.1 s. Goal: <= 0.5 %
  of a core.
- overhead: wall time of a whole `hlrp-ladder run` / the sum of its probes' wall times. Goal: <= 1.03.
- probes to the verdict: a ladder over 8..64 step 4 on a fixture whose memory is linear in bs (or has a knee),
  under a real cap: linear, `refine: bisect` (goal: <= 6) and `refine: model` (goal: <= 3 on linear memory).
- parallel slots: the same 12-rung ladder with a stress phase, 1 against 2 slots, locally and through a real
  single-node SLURM (started here from tests/slurm/cluster.sh); the demo's ladder (local_s2) likewise, with the
  kernel peaks of the rungs both ran side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hlrp_ladder.records import ProbeRequest  # noqa: E402
from hlrp_ladder.probe.runner import run_probe  # noqa: E402
from hlrp_ladder.probe.cgroup import discovery as cgroup_discovery  # noqa: E402

MEMHOG = ROOT / "tests" / "fixtures" / "memhog.py"
MIB = 2**20


def probe(tmp: Path, name: str, args: list[str], rss_limit=8 << 30, interval=0.1, cap=None, on_sample=None):
    req = ProbeRequest(folder=tmp / name, batch_size=1, phase="ladder", attempt=1,
                       argv=[sys.executable, str(MEMHOG), *args], env={}, cwd=str(tmp), rss_limit_bytes=rss_limit,
                       cap_bytes=cap, metric="rss", interval_s=interval, timeout_s=120, kill_grace_s=1,
                       cgroup_name=f"bench-{os.getpid()}-{name}")
    return run_probe(req, on_sample)


def peak_accuracy(tmp: Path, repeats: int) -> dict:
    rss_err, cg_err = [], []
    for i in range(repeats):
        rec = probe(tmp, f"peak-{i}", ["base_mb=100", "mb_per_sample=0", "spike_mb=400", "spike_at=5",
                                       "spike_s=0.3", "steps=15", "step_s=0.05"])
        rss_err.append(abs(rec.peaks.sampled_rss_bytes - rec.peaks.vmhwm_bytes) / rec.peaks.vmhwm_bytes)
        if rec.peaks.cgroup_sampled_bytes and rec.peaks.kernel_bytes and rec.limits.cgroup:
            cg_err.append(abs(rec.peaks.cgroup_sampled_bytes - rec.peaks.kernel_bytes) / rec.peaks.kernel_bytes)
    return {"repeats": repeats, "rss_vs_vmhwm_max_err_pct": round(100 * max(rss_err), 2),
            "rss_vs_vmhwm_median_err_pct": round(100 * statistics.median(rss_err), 2),
            "cgroup_vs_kernel_max_err_pct": round(100 * max(cg_err), 2) if cg_err else None}


def reaction(tmp: Path, repeats: int) -> dict:
    delays = []
    for i in range(repeats):
        rec = probe(tmp, f"react-{i}", ["base_mb=50", "mb_per_sample=0", "spike_mb=600", "spike_at=5",
                                        "spike_s=5", "steps=200", "step_s=0.05"], rss_limit=400 * MIB)
        assert rec.outcome.value == "rss_breach", rec.outcome
        rows = [line.split(",") for line in (tmp / f"react-{i}" / "memory.csv").read_text().splitlines()[1:]]
        below = [float(t) for t, rss, *_ in rows if int(rss) <= 400 * MIB]
        # The crossing happened after the last sample below the limit: this is an upper bound.
        delays.append((rec.ended_at - rec.started_at) - below[-1])
    return {"repeats": repeats, "median_s": round(statistics.median(delays), 3), "max_s": round(max(delays), 3)}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def monitor_cost(tmp: Path, seconds: float, with_cgroup: bool) -> dict:
    """CPU of this process while it watches the tree, from the 10th sample (tree complete) to the last one:
    steady state, without the one-off costs of spawning and of writing the record (reported apart)."""
    marks: list[tuple[int, float, float]] = []

    def on_sample(request, sample):
        if sample.n_procs == 16:
            marks.append((len(marks), time.monotonic(), _cpu()))

    original = cgroup_discovery.mounts
    if not with_cgroup:
        cgroup_discovery.mounts = lambda: (None, None)
    try:
        cpu0, wall0 = _cpu(), time.monotonic()
        rec = probe(tmp, f"cost-{'cg' if with_cgroup else 'nocg'}",
                    ["base_mb=20", "mb_per_sample=0", "workers=15", "worker_mb=2", f"steps={int(seconds)}",
                     "step_s=1"], on_sample=on_sample)
        cpu_all, wall_all = _cpu() - cpu0, time.monotonic() - wall0
    finally:
        cgroup_discovery.mounts = original
    (_, w1, c1), (_, w2, c2) = marks[10], marks[-1]
    steady = (c2 - c1) / (w2 - w1)
    return {"procs": rec.peaks.max_procs, "samples": len(marks) - 10, "steady_wall_s": round(w2 - w1, 2),
            "pct_of_core": round(100 * steady, 3),
            "one_off_cpu_s": round(cpu_all - (c2 - c1), 3), "whole_probe_pct_of_core": round(100 * cpu_all / wall_all, 3),
            "cgroup": rec.limits.cgroup is not None}


def overhead(tmp: Path, rungs: int, step_s: float) -> dict:
    spec = tmp / "overhead.yaml"
    argv = [sys.executable, str(MEMHOG), "base_mb=30", "mb_per_sample=5", f"step_s={step_s}"]
    spec.write_text(f"name: overhead\ncommand: {json.dumps(argv)}\nbatch_sizes: {list(range(1, rungs + 1))}\n"
                    f"probe: {{max_steps: 100, check_interval: 50, limit_batches: 1}}\nruns_dir: {tmp / 'runs'}\n")
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "hlrp_ladder", "run", str(spec)], capture_output=True, text=True,
                         cwd=ROOT)
    wall = time.monotonic() - start
    assert res.returncode == 0, res.stderr
    run = sorted((tmp / "runs" / "overhead").iterdir())[-1]
    probes = [json.loads(p.read_text()) for p in run.glob("bs-*/result.json")]
    # The warm-up is a probe too (it runs the trainer, not the orchestrator): its wall counts among the probes'.
    warm = [json.loads(p.read_text()) for p in run.glob("warmup/result.json")]
    total = sum(p["ended_at"] - p["started_at"] for p in probes + warm)
    return {"rungs": len(probes), "warmup": bool(warm), "ladder_wall_s": round(wall, 2),
            "sum_probe_wall_s": round(total, 2), "ratio": round(wall / total, 4)}


def runner_start(repeats: int) -> dict:
    """The node-side runner's start-up, paid once per probe: importing ``hlrp_ladder.probe.node`` (all a runner
    imports before it spawns the trainer) against a bare interpreter, side by side, median of ``repeats``."""
    def wall(code: str) -> float:
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        return time.monotonic() - start
    bare, runner = [], []
    for _ in range(repeats):
        bare.append(wall("pass"))
        runner.append(wall("import hlrp_ladder.probe.node"))
    return {"repeats": repeats, "bare_python_s": round(statistics.median(bare), 3),
            "runner_import_s": round(statistics.median(runner), 3),
            "runner_extra_s": round(statistics.median(runner) - statistics.median(bare), 3)}


def _ladder(tmp: Path, name: str, body: str, env=None) -> tuple[dict, list[dict], float]:
    """Run `hlrp-ladder run` on a spec; its ladder.json, its records (oldest first) and its wall time."""
    spec = tmp / f"{name}.yaml"
    spec.write_text(f"name: {name}\nruns_dir: {tmp / 'runs'}\n{body}")
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "hlrp_ladder", "run", str(spec)], capture_output=True, text=True,
                         cwd=ROOT, env=env)
    wall = time.monotonic() - start
    assert res.returncode in (0, 3), res.stderr[-3000:]
    run = sorted((tmp / "runs" / name).iterdir())[-1]
    records = sorted((json.loads(p.read_text()) for p in run.glob("bs-*/result.json")), key=lambda r: r["started_at"])
    return json.loads((run / "ladder.json").read_text()), records, wall


def probes_to_verdict(tmp: Path) -> dict:
    """Fixtures whose memory is linear in bs (20 MiB + 4 MiB per sample), or has a knee (+12 MiB per sample
    past bs=32), under a real 200 MiB cgroup cap, over 8..64 step 4: how many one-val probes each search needs
    to reach its verdict."""
    out = {}
    shapes = {"linear": ["base_mb=20", "mb_per_sample=4"],
              "knee": ["base_mb=20", "mb_per_sample=2", "knee_bs=32", "knee_mb_per_sample=12"]}
    for shape, knobs in shapes.items():
        for refine in ("none", "bisect", "model"):
            argv = [sys.executable, str(MEMHOG), *knobs, "step_s=0.005"]
            state, records, _ = _ladder(tmp, f"verdict-{shape}-{refine}",
                                        f"command: {json.dumps(argv)}\nbatch_sizes: {{start: 8, stop: 64, step: 4}}\n"
                                        f"refine: {refine}\ngranularity: 4\nmemory: {{cap: 200MiB}}\n"
                                        f"probe: {{max_steps: 35, check_interval: 30, limit_batches: 1}}\n")
            out[f"{shape}/{refine}"] = {"probes": len(records), "order": [p["batch_size"] for p in records],
                                        "pick": state.get("pick")}
    return out


HOG_LADDER = ("command: {argv}\nbatch_sizes: {{start: 2, stop: 24, step: 2}}\n"
              "probe: {{max_steps: 60, check_interval: 30, limit_batches: 1}}\n"
              "stress: {{max_steps: 240, check_interval: 60, limit_batches: 1}}\n"
              "memory: {{cap: 400MiB, sample_interval_s: 0.1}}\nexecutor: {{kind: {kind}, max_parallel: {slots}, "
              "slurm: {{cpus_per_task: 1}}}}\n")


def parallel_walls(tmp: Path, kind: str) -> dict:
    """The same 12-rung ladder (memory linear: 50 + 25 MiB per sample, a real 400 MiB cap: one-val fits to bs=12;
    the stress phase keeps 10 MiB more per validation, so bs=12 fails it and bs=10 holds) with 1 and 2 slots
    side by side: wall time and pick. 2 slots is this 2-core machine's honest maximum (one core each)."""
    argv = json.dumps([sys.executable, str(MEMHOG), "base_mb=50", "mb_per_sample=25", "growth_mb_per_val=10",
                       "step_s=0.02"])
    out = {}
    for slots in (1, 2):
        state, records, wall = _ladder(tmp, f"par-{kind}-{slots}", HOG_LADDER.format(argv=argv, kind=kind,
                                                                                       slots=slots))
        out[slots] = {"wall_s": round(wall, 1), "pick": state.get("pick"), "probes": len(records),
                      "cancelled": sum(r["outcome"] == "cancelled" for r in records)}
    out["ratio_2_to_1"] = round(out[2]["wall_s"] / out[1]["wall_s"], 3)
    four = tmp / "four.yaml"
    four.write_text(f"name: four\nruns_dir: {tmp / 'runs'}\n" + HOG_LADDER.format(argv=argv, kind=kind, slots=4))
    res = subprocess.run([sys.executable, "-m", "hlrp_ladder", "preflight", str(four), "--json"],
                         capture_output=True, text=True, cwd=ROOT)
    refused = [f for f in json.loads(res.stdout) if f["check"] == "parallel cores" and f["status"] == "fail"]
    out[4] = {"refused": refused[0]["detail"]} if refused else {"refused": None}
    return out


def slurm_walls(tmp: Path) -> dict:
    """The same ladder through a real single-node SLURM (tests/slurm/cluster.sh), 1 against 2 jobs at once."""
    script = ROOT / "tests" / "slurm" / "cluster.sh"
    state = Path(tempfile.mkdtemp(prefix="hlrp-bench-slurm-"))
    subprocess.run(["bash", str(script), "install"], check=True, capture_output=True)
    start = subprocess.run(["bash", str(script), "start", str(state)], check=True, capture_output=True, text=True)
    env = {**os.environ, "SLURM_CONF": start.stdout.strip().splitlines()[-1].split("=", 1)[1]}
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    try:
        return parallel_walls(tmp, "slurm")
    finally:
        subprocess.run(["bash", str(script), "stop", str(state)], capture_output=True)
        if old is None:
            os.environ.pop("SLURM_CONF", None)


def demo_walls(tmp: Path) -> dict:
    """`ladders/local_s2.yaml` (the demo: the bundled trainer under a 1.25 GiB cap) with 1 and 2 slots: wall,
    pick, and the kernel peak of every rung both ran (the noise between runs is ~±40 MiB, bench/STRESS.md)."""
    base = (ROOT / "ladders" / "local_s2.yaml").read_text()
    out, peaks = {}, {}
    for slots in (1, 2):
        body = base.replace("name: local_s2\n", "") + f"\nexecutor: {{max_parallel: {slots}}}\n"
        state, records, wall = _ladder(tmp, f"demo-{slots}", body)
        out[slots] = {"wall_s": round(wall, 1), "pick": state.get("pick"), "probes": len(records),
                      "cancelled": sum(r["outcome"] == "cancelled" for r in records)}
        peaks[slots] = {r["folder"]: r["peaks"]["kernel_bytes"] for r in records if r["outcome"] != "cancelled"}
    both = sorted(set(peaks[1]) & set(peaks[2]))
    out["peak_delta_mib"] = {f: round((peaks[2][f] - peaks[1][f]) / 2**20) for f in both}
    out["ratio_2_to_1"] = round(out[2]["wall_s"] / out[1]["wall_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    n = 3 if args.quick else 10
    with tempfile.TemporaryDirectory(prefix="hlrp-bench-") as tmp_name:
        tmp = Path(tmp_name)
        results = {
            "peak_accuracy": peak_accuracy(tmp, n),
            "reaction": reaction(tmp, n),
            "monitor_cost_cgroup": monitor_cost(tmp, 10 if args.quick else 30, with_cgroup=True),
            "monitor_cost_psutil_scan": monitor_cost(tmp, 10 if args.quick else 30, with_cgroup=False),
            "runner_start": runner_start(n),
            "overhead": overhead(tmp, 6, 0.03 if args.quick else 0.05),
            "probes_to_verdict": probes_to_verdict(tmp),
            "parallel_local": parallel_walls(tmp, "local"),
            "parallel_slurm": slurm_walls(tmp),
            "demo": demo_walls(tmp) if not args.quick else None,
        }
    r = results
    lines = [
        "# Monitor benchmarks",
        "",
        f"Produced by `python bench/monitor_bench.py{' --quick' if args.quick else ''}` on {platform.node()} "
        f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M')}. All measured in this one run.",
        "",
        "| what | measured | goal |",
        "|---|---|---|",
        f"| peak accuracy: sampled tree RSS vs kernel VmHWM, 300 ms spike of 400 MiB ({n} runs) | max "
        f"{r['peak_accuracy']['rss_vs_vmhwm_max_err_pct']} %, median {r['peak_accuracy']['rss_vs_vmhwm_median_err_pct']} % "
        f"| within 1 % |",
        f"| peak accuracy: sampled cgroup charge vs the cgroup's own peak | max "
        f"{r['peak_accuracy']['cgroup_vs_kernel_max_err_pct']} % | (the report uses the cgroup's peak) |",
        f"| reaction: last sample under the soft limit -> tree reaped (an upper bound; {n} runs) | median {r['reaction']['median_s']} s, max "
        f"{r['reaction']['max_s']} s | <= 0.25 s |",
        f"| monitor CPU, {r['monitor_cost_cgroup']['procs']}-process tree, 0.1 s, member list from the cgroup | "
        f"{r['monitor_cost_cgroup']['pct_of_core']} % of a core (whole probe incl. spawn and record: "
        f"{r['monitor_cost_cgroup']['whole_probe_pct_of_core']} %) | <= 0.5 % |",
        f"| monitor CPU, {r['monitor_cost_psutil_scan']['procs']}-process tree, 0.1 s, no cgroup (psutil /proc scan "
        f"every 1 s) | {r['monitor_cost_psutil_scan']['pct_of_core']} % of a core (whole probe: "
        f"{r['monitor_cost_psutil_scan']['whole_probe_pct_of_core']} %) | <= 0.5 % |",
        f"| node-side runner start-up: `import hlrp_ladder.probe.node` beyond a bare interpreter (median of "
        f"{r['runner_start']['repeats']}) | {r['runner_start']['runner_extra_s']} s (bare python "
        f"{r['runner_start']['bare_python_s']} s) | as small as it gets: paid per probe |",
        f"| overhead: ladder wall / sum of probe walls, warm-up included ({r['overhead']['rungs']} rungs of "
        f"~{r['overhead']['sum_probe_wall_s'] / r['overhead']['rungs']:.1f} s) | {r['overhead']['ratio']} | <= 1.03 |",
    ]
    pv = r["probes_to_verdict"]
    for shape in ("linear", "knee"):
        for refine, goal in (("none", ""), ("bisect", "<= 6" if shape == "linear" else ""),
                             ("model", "<= 3" if shape == "linear" else "")):
            item = pv[f"{shape}/{refine}"]
            lines.append(f"| one-val probes to the verdict, 8..64 step 4, memory {shape} in bs, 200 MiB cap, "
                         f"`refine: {refine}` (order {item['order']}) | {item['probes']} (pick {item['pick']}) | "
                         f"{goal} |")
    for kind in ("local", "slurm"):
        par = r[f"parallel_{kind}"]
        lines.append(f"| ladder wall, hog fixture, 12 rungs + stress, 400 MiB cap, {kind}: 1 slot / 2 slots | "
                     f"{par[1]['wall_s']} s / "
                     f"{par[2]['wall_s']} s = **{par['ratio_2_to_1']}** (picks {par[1]['pick']} / {par[2]['pick']}; "
                     f"{par[2]['cancelled']} speculative probe(s) cancelled) | same pick |")
    lines.append(f"| 4 local slots on this machine | refused by preflight: {r['parallel_local'][4]['refused']} | |")
    if r["demo"]:
        d = r["demo"]
        lines.append(f"| `make demo`'s ladder (local_s2): 1 slot / 2 slots | {d[1]['wall_s']} s / {d[2]['wall_s']} s "
                     f"= **{d['ratio_2_to_1']}** (picks {d[1]['pick']} / {d[2]['pick']}) | pick bs=20 |")
        deltas = d["peak_delta_mib"]
        lines.append(f"| its rungs' kernel peaks, 2 slots minus 1 slot | {deltas} MiB (max |Δ| "
                     f"{max((abs(v) for v in deltas.values()), default=0)} MiB) | within ±40 MiB (bench/STRESS.md) |")
    lines += [
        "",
        "```json",
        json.dumps(results, indent=2),
        "```",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

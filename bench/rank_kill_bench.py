"""How fast a distributed rung is decided once the kernel OOM-kills a rank: from the kill (the kernel log's own
timestamp) to the verdict (the record written), side by side with and without the runner's rank handling.

    python bench/rank_kill_bench.py [--runs 3]      -> bench/RANKS.md   (root: a memory cgroup, /dev/kmsg)

Two ranks of tests/fixtures/ddp_hog.py on torch's gloo backend (CPU), started by the script itself (no agent),
rank 0 holding 40 MiB per sample more, bs=16 under a 1000 MiB cap: the kernel kills rank 0. Two kinds of
survivor: gloo's own (its all_reduce fails at once when the peer's socket closes) and one that waits in the
collective as NCCL's do (``survivors=hang``), which without rank handling waits for the probe's timeout (here
60 s; gloo's and NCCL's defaults are 30 and 10 minutes).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hlrp_ladder.probe.runner import run_probe  # noqa: E402
from hlrp_ladder.records import ProbeRequest  # noqa: E402
from hlrp_ladder.search.words import probe_clause  # noqa: E402

HOG = ROOT / "tests" / "fixtures" / "ddp_hog.py"
KILLED = re.compile(r"^\d+,\d+,(\d+),[^;]*;.*Killed process (\d+)")
TIMEOUT_S = 60


def kills_since(fd: int) -> dict[int, float]:
    """pid -> wall time of each 'Killed process' record the kernel wrote since ``fd`` was opened (the record's
    timestamp is microseconds of the kernel's monotonic clock)."""
    offset = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)
    out = {}
    while True:
        try:
            record = os.read(fd, 8192).decode("utf-8", "replace")
        except BlockingIOError:
            return out
        match = KILLED.match(record)
        if match:
            out[int(match.group(2))] = int(match.group(1)) / 1e6 + offset


def one(tmp: Path, name: str, ranks: int, survivors: str) -> tuple[float, str]:
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(fd, 0, os.SEEK_END)
    argv = [sys.executable, str(HOG), "spawn=2", "batch_size=16", "steps=200", "step_s=0.1", "gloo_timeout_s=600",
            f"survivors={survivors}"]
    req = ProbeRequest(folder=tmp / name, batch_size=16, phase="ladder", argv=argv, cwd=str(tmp),
                       rss_limit_bytes=20 << 30, cap_bytes=1000 << 20, cgroup="auto",
                       cgroup_name=f"bench-{os.getpid()}-{name}", timeout_s=TIMEOUT_S, kill_grace_s=1, ranks=ranks)
    rec = run_probe(req)
    verdict_at = (tmp / name / "result.json").stat().st_mtime
    kills = kills_since(fd)
    os.close(fd)
    if not kills:
        raise SystemExit(f"{name}: no OOM kill in the kernel log ({probe_clause(rec)})")
    return verdict_at - min(kills.values()), probe_clause(rec)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "RANKS.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rank-bench-") as tmp:
        for survivors in ("gloo", "hang"):
            for ranks, label in ((2, "rank handling (launcher.kind: spawn, 2 ranks)"), (0, "no rank handling")):
                took, clause = [], ""
                for k in range(args.runs):
                    seconds, clause = one(Path(tmp), f"{survivors}-{ranks}-{k}", ranks, survivors)
                    took.append(seconds)
                rows.append((survivors, label, took, clause))
                print(f"{survivors:5} {label:45} kill->verdict median {statistics.median(took):6.2f} s  {clause}",
                      flush=True)
    lines = ["# A distributed rung's kill -> verdict, measured", "",
             f"`python bench/rank_kill_bench.py --runs {args.runs}` on {platform.node()} ({os.cpu_count()} cores), "
             f"{time.strftime('%Y-%m-%d %H:%M')}. Two gloo ranks (CPU) started by the trainer itself, rank 0 "
             f"OOM-killed by the kernel at a 1000 MiB cap; seconds from the kernel log's kill record to the record "
             f"written; the probe's timeout {TIMEOUT_S} s.", "",
             "| survivor | runner | kill -> verdict (median, s) | each run (s) | verdict |",
             "|:--|:--|--:|:--|:--|"]
    for survivors, label, took, clause in rows:
        what = "fails in gloo at once" if survivors == "gloo" else "waits in the collective (as NCCL's do)"
        lines.append(f"| {what} | {label} | {statistics.median(took):.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in took)} | {clause} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Where does the stress probe's extra memory come from? Side by side at one batch size, on the bundled trainer
with the ladders/local_s2.yaml overrides, no cap (the cgroup only measures):

    python bench/stress_attribution.py [--bs 20]      -> bench/STRESS.md

Variants change one thing at a time between the one-val recipe and the stress recipe.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hlrp_ladder.records import ProbeRequest  # noqa: E402
from hlrp_ladder.probe.runner import run_probe  # noqa: E402
from hlrp_ladder.probe.host import usable_memory  # noqa: E402
from hlrp_ladder.spec import Recipe, load_spec  # noqa: E402

MIB = 2**20
ARENAS = {"MALLOC_ARENA_MAX": "2"}
VARIANTS = [  # name, max_steps, check_interval, limit_batches, extra env
    ("one-val recipe", 35, 30, 1, {}),
    ("one-val, 2 val batches", 35, 30, 2, {}),
    ("220 steps, 1 validation (at 200), 2 batches", 220, 200, 2, {}),
    ("220 steps, 4 validations, 1 batch", 220, 50, 1, {}),
    ("stress recipe: 220 steps, 4 validations, 2 batches", 220, 50, 2, {}),
    ("one-val recipe, MALLOC_ARENA_MAX=2", 35, 30, 1, ARENAS),
    ("stress recipe, MALLOC_ARENA_MAX=2", 220, 50, 2, ARENAS),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "STRESS.md")
    args = parser.parse_args()
    spec = load_spec(ROOT / "ladders" / "local_s2.yaml")
    rows = []
    with tempfile.TemporaryDirectory(prefix="hlrp-stress-") as tmp:
        for i, (name, steps, every, batches, env) in enumerate(VARIANTS):
            recipe = Recipe(max_steps=steps, check_interval=every, limit_batches=batches, keys=spec.probe.keys)
            req = ProbeRequest(folder=Path(tmp) / f"v{i}", batch_size=args.bs, phase="ladder", attempt=1,
                               argv=spec.argv(args.bs, recipe), env=env, cwd=str(ROOT),
                               rss_limit_bytes=spec.memory.rss_limit_bytes(usable_memory()), cap_bytes=None, metric="rss",
                               interval_s=0.1, timeout_s=900, kill_grace_s=5, cgroup_name=f"stress-attr-{os.getpid()}-{i}")
            rec = run_probe(req)
            vals = [(p.step, (p.cgroup_bytes or 0) // MIB) for p in rec.metrics.val_points]
            events = [json.loads(line) for line in (Path(tmp) / f"v{i}" / "metrics.jsonl").read_text().splitlines()
                      if '"val_end"' in line]
            streams = max((e.get("live_streams", {}).get("max", {}).get("val", 0) for e in events), default=0)
            rows.append((name, rec.outcome.value, rec.peaks.kernel_bytes // MIB, rec.peaks.sampled_rss_bytes // MIB,
                         vals, streams, round(rec.duration_s, 1)))
            print(rows[-1], flush=True)
    base = rows[0][2]
    lines = [
        "# Where the stress probe's extra memory comes from",
        "",
        f"Produced by `python bench/stress_attribution.py --bs {args.bs}` on {platform.node()} ({os.cpu_count()} "
        f"cores), {time.strftime('%Y-%m-%d %H:%M')}: the bundled trainer with the `ladders/local_s2.yaml` overrides "
        f"at bs={args.bs}, no cap (a cgroup measures only). One variable changes at a time.",
        "",
        "| recipe | outcome | charged peak MiB | vs one-val | tree RSS peak MiB | charged MiB at each validation end "
        "| val streams open at once (max) | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, outcome, peak, rss, vals, streams, wall in rows:
        lines.append(f"| {name} | {outcome} | {peak} | {peak - base:+d} | {rss} | "
                     f"{', '.join(f'{s}: {m}' for s, m in vals)} | {streams} | {wall} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

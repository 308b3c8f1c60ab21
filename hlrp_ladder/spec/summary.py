"""What ``validate`` prints of a ladder spec: its limits, and every probe's argv and environment diff, exactly
as they will run (secrets masked)."""
from __future__ import annotations

import shlex

from hlrp_ladder.records import METRICS_ENV, Phase
from hlrp_ladder.spec.model import Spec
from hlrp_ladder.util.masking import mask, mask_argv
from hlrp_ladder.util.sizes import gib


def summary_lines(spec: Spec, source: str, total: int) -> list[str]:
    """The spec's rungs, limits (sizes resolved against ``total`` bytes, the memory the probes can use) and each
    probe's argv."""
    mem = spec.memory
    cap = "none" if mem.cap is None else f"{mem.cap} = {mem.cap_bytes(total) / 2**30:.2f} GiB (cgroup charge)"
    lines = [f"{source}: ok — {len(spec.batch_sizes)} rungs {spec.batch_sizes}; soft limit {mem.rss_limit} = "
             f"{mem.rss_limit_bytes(total) / 2**30:.2f} GiB ({mem.metric}); cap {cap}; timeout {spec.timeout_s:g} s",
             "env: " + " ".join(f"{k}={v}" for k, v in
                                mask({**spec.env, METRICS_ENV: "<probe folder>/metrics.jsonl"}).items())]
    lines += [f"bs={bs}: {shlex.join(mask_argv(spec.argv(bs)))}" for bs in spec.batch_sizes]
    if spec.stress is not None:
        argv = shlex.join(mask_argv(spec.argv(0, spec.recipe(Phase.stress))))
        lines.append(f"stress, at each candidate from the pick down (here bs=N): {argv[:-1]}N "
                     f"(timeout {spec.timeout(Phase.stress):.0f} s)")
    headroom = mem.headroom_bytes(total)
    extras = [f"refine={spec.refine} granularity={spec.granularity}" if spec.refine != "none" else "",
              f"repeats={spec.repeats}" if spec.repeats > 1 else "",
              f"headroom {gib(headroom)} under the {mem.fit_limit(total)[1]}" if headroom else ""]
    if any(extras):
        lines.append("; ".join(e for e in extras if e))
    if spec.launcher.kind != "none":
        lines.append(f"launcher: {spec.launcher.kind}, {spec.launcher.nproc_per_node} ranks, each rank's memory recorded; "
                     f"the first rank to die decides (an OOM kill at once, another end after "
                     f"{spec.launcher.rank_grace_s:g} s); limits " +
                     ("per rank (memory.per_rank)" if mem.per_rank else "on the whole job"))
    g = mem.gpu
    lines.append(f"GPU memory: limit {g.limit} per device, headroom {g.headroom or 'none'}, "
                 f"{'cap ' + g.cap + ' (emulated)' if g.cap else 'no cap'}; required (no visible GPU is an error)"
                 if g is not None else
                 "GPU memory: judged wherever a probe sees a GPU (limit 90% per device, headroom 2GiB)")
    return lines

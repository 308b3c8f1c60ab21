"""The local executor's preflight checks (run only for a local spec): the limits against this machine, whether a
cap can be enforced here, and whether parallel slots fit its memory and cores together."""
from __future__ import annotations

import os
import threading
from typing import Iterator

from hlrp_ladder.preflight.core import FAIL, OK, WARN, Context, Finding, check
from hlrp_ladder.probe import cgroup
from hlrp_ladder.probe.host import usable_memory
from hlrp_ladder.util.sizes import gib


@check("memory", executor="local")
def memory(ctx: Context) -> Iterator[Finding]:
    """Local probes: the limits against this machine, and whether a cap can be enforced here (on a cluster the
    executor's own checks compare them with its nodes)."""
    mem, total = ctx.spec.memory, usable_memory()
    limit = mem.rss_limit_bytes(total)
    if limit >= total:
        yield Finding("memory rss_limit", FAIL, f"soft limit {gib(limit)} is not below this machine's {gib(total)}: the "
                                                f"kernel would kill first", "use a share, e.g. memory.rss_limit: 85%")
    else:
        yield Finding("memory rss_limit", OK, f"soft limit {gib(limit)} of {gib(total)} RAM")
    cap = mem.cap_bytes(total)
    if cap is None:
        return
    if cap >= total:
        yield Finding("memory cap", FAIL, f"cap {gib(cap)} is not below this machine's {gib(total)}",
                      "a cap emulates a smaller machine: set it below the RAM here")
        return
    cg, note = cgroup.create(f"preflight-{os.getpid()}-{threading.get_ident()}", cap)
    if cg is None:  # not a blocker: the run goes on with the soft limit, and says so
        yield Finding("memory cap", WARN, f"no cap: {gib(cap)} cannot be enforced here ({note}); the run goes on "
                                          f"with the soft limit only, lowered to {gib(cap)}",
                      "run as root, or from a cgroup delegated to you (systemd-run --user --scope -p "
                      "Delegate=yes ...), or remove memory.cap")
        return
    cg.remove()
    headroom = mem.headroom_bytes(total)
    if headroom and headroom >= cap:
        yield Finding("memory headroom", FAIL, f"headroom {gib(headroom)} is not below the cap {gib(cap)}")
    yield Finding("memory cap", OK, f"cap {gib(cap)} enforceable through a cgroup {cg.version} memory controller")


@check("parallel", executor="local")
def parallel(ctx: Context) -> Iterator[Finding]:
    """Local slots must fit this machine together: their limits in its memory, their cores in its cores."""
    ex = ctx.spec.executor
    if ex.max_parallel == 1:
        return
    total, mem = usable_memory(), ctx.spec.memory
    each = mem.cap_bytes(total) or mem.rss_limit_bytes(total)
    what = "cap" if mem.cap else "soft limit"
    if ex.max_parallel * each > total:
        yield Finding("parallel memory", FAIL, f"{ex.max_parallel} slots x the {gib(each)} {what} = "
                      f"{gib(ex.max_parallel * each)} > the {gib(total)} this machine can use",
                      f"lower executor.max_parallel to {max(1, total // each)} or the {what}")
    else:
        yield Finding("parallel memory", OK, f"{ex.max_parallel} slots x the {gib(each)} {what} fit in {gib(total)}")
    cores = len(os.sched_getaffinity(0))
    per = ex.cpus_per_probe or max(1, cores // ex.max_parallel)
    if ex.max_parallel * per > cores:
        yield Finding("parallel cores", FAIL, f"{ex.max_parallel} slots x {per} core(s) > the {cores} cores here: "
                      f"probes competing for CPU measure different peaks",
                      f"lower executor.max_parallel or executor.cpus_per_probe (at most {cores} cores in all)")
    else:
        yield Finding("parallel cores", OK, f"{ex.max_parallel} slots of {per} core(s) each, pinned (of {cores})")

"""The local executor's preflight checks (run only for a local spec): the limits against this machine, whether a
cap can be enforced here, whether parallel slots fit its memory, cores and GPUs together, and the GPU spec
against the GPUs here."""
from __future__ import annotations

import os
import threading
from typing import Iterator, Optional

from hlrp_ladder.preflight.core import FAIL, OK, WARN, Context, Finding, check
from hlrp_ladder.probe import cgroup
from hlrp_ladder.probe import gpu as gpus
from hlrp_ladder.probe.host import usable_memory
from hlrp_ladder.util import sizes
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


def gpu_cap_error(spec) -> Optional[str]:
    """A local spec whose emulated GPU is larger than a GPU here: a mistake in the spec, named with the device."""
    g = spec.memory.gpu
    if spec.executor.kind != "local" or g is None or g.cap is None:
        return None
    cap = sizes.resolve(g.cap, 1)
    for device in gpus.visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))[0]:
        if cap > device.total:
            return f"memory.gpu.cap: {gib(cap, 1)} is more than {device.words()} has"
    return None


@check("gpu", executor="local")
def gpu(ctx: Context) -> Iterator[Finding]:
    """GPU memory: a spec that judges it needs a GPU here; slots x gpus_per_probe must fit the visible GPUs (two
    probes on one GPU take each other's memory: measured on an H200, a sibling's allocation made the other
    probe's CUDA OOM and changed the pick)."""
    spec, ex = ctx.spec, ctx.spec.executor
    devices, nvml, why = gpus.visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    named = ", ".join(d.words() for d in devices)
    if not devices:
        if os.path.exists("/dev/nvidiactl") and nvml is None:
            yield Finding("gpu", WARN, f"this machine has an NVIDIA driver but {why}: GPU memory is not judged and "
                          f"parallel slots are not given GPUs of their own", "pip install nvidia-ml-py")
        if spec.memory.gpu is not None:
            yield Finding("gpu", FAIL, f"memory.gpu is set but {why}: GPU memory cannot be judged here",
                          "run where the GPU is, or remove memory.gpu")
        elif ex.gpus_per_probe:
            yield Finding("gpu", FAIL, f"executor.gpus_per_probe is {ex.gpus_per_probe} but {why}",
                          "remove executor.gpus_per_probe")
        return
    problem = gpu_cap_error(spec)
    if problem:
        yield Finding("gpu cap", FAIL, problem, "set memory.gpu.cap below the device's memory")
    per = gpus.per_probe(ex.gpus_per_probe, len(devices))
    if per == 0:
        yield Finding("gpu slots", WARN, f"executor.gpus_per_probe is 0: probes share {named}, and each one's "
                      f"GPU memory counts only its own processes", "")
    elif ex.max_parallel * per > len(devices):
        yield Finding("gpu slots", FAIL, f"{ex.max_parallel} slots x {per} GPU(s) per probe > the {len(devices)} "
                      f"visible GPU(s) ({named}): probes sharing a GPU take each other's memory",
                      f"lower executor.max_parallel to {max(1, len(devices) // per)}, or executor.gpus_per_probe "
                      f"(0 for a trainer that uses no GPU)")
    else:
        yield Finding("gpu slots", OK, f"{ex.max_parallel} slot(s) x {per} GPU(s) of {named}")

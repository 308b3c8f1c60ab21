"""The SLURM executor's preflight checks (run only for a SLURM spec): the client tools, a
controller that answers, a partition that takes the job's --mem and --time, cgroup enforcement, and the runs
folder and Python environment seen from a node — by a real round-trip job, since a login node's view proves
nothing about the nodes'."""
from __future__ import annotations

import math
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

from hlrp_ladder.executors.slurm import SlurmExecutor, expand_hostlist, time_limit
from hlrp_ladder.executors.slurm import commands
from hlrp_ladder.executors.slurm.commands import SlurmError
from hlrp_ladder.executors.slurm.watcher import Watcher
from hlrp_ladder.preflight.core import FAIL, OK, WARN, Context, Finding, check
from hlrp_ladder.search import plan as plans
from hlrp_ladder.search.state import warmup_cap

MIB = 2**20


_READY_LOCK = threading.Lock()


def _ready(ctx: Context) -> bool:
    """Tools there and the controller answering (the checks below need both; the first two say why not). Asked
    once: the checks run concurrently."""
    with _READY_LOCK:
        if "slurm_ready" not in ctx.notes:
            ctx.notes["slurm_ready"] = not commands.missing_tools() and commands.ping() is None
        return ctx.notes["slurm_ready"]


@check("slurm controller", executor="slurm")
def controller(ctx: Context) -> Iterator[Finding]:
    missing = commands.missing_tools()
    if missing:
        yield Finding("slurm tools", FAIL, f"{', '.join(missing)} not found on PATH",
                      "install the SLURM client tools (Debian: slurm-client), or load the cluster's module")
        return
    why = commands.ping()
    if why is not None:
        conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
        yield Finding("slurm controller", FAIL, f"scontrol ping: {why} (config {conf})",
                      "check SLURM_CONF and that slurmctld runs; from a laptop, run hlrp-ladder on the login node")
        return
    yield Finding("slurm controller", OK, "slurmctld answers (scontrol ping)")


@check("slurm partition", executor="slurm")
def partition(ctx: Context) -> Iterator[Finding]:
    if not _ready(ctx):
        return
    settings = ctx.spec.executor.slurm
    try:
        parts = commands.partitions(settings.partition)
    except SlurmError as exc:
        yield Finding("slurm partition", FAIL, str(exc), "set executor.slurm.partition to one `sinfo -s` lists")
        return
    if not parts:
        yield Finding("slurm partition", FAIL, "no partition named and no default partition",
                      "set executor.slurm.partition")
        return
    part = parts[0]
    name = part.get("PartitionName")
    if part.get("State") != "UP":
        yield Finding("slurm partition", FAIL, f"partition {name} is {part.get('State')}: jobs would wait in the "
                                               f"queue", "choose a partition that is UP (sinfo -s)")
        return
    stress = ctx.spec.timeout("stress") if ctx.spec.stress is not None else 0
    wanted = commands.minutes(time_limit(settings, max(ctx.spec.timeout_s, stress), None) or "")
    allowed = commands.minutes(part.get("MaxTime", "UNLIMITED"))
    if wanted is not None and allowed is not None and wanted > allowed:
        yield Finding("slurm partition", FAIL, f"a probe asks --time={commands.format_minutes(wanted)}, partition "
                                               f"{name} allows {part.get('MaxTime')}",
                      "lower timeout_s, or set executor.slurm.time, or choose another partition")
        return
    yield Finding("slurm partition", OK, f"{name} is UP, MaxTime {part.get('MaxTime')}"
                                         + (f", probes ask --time={commands.format_minutes(wanted)}" if wanted else ""))
    try:
        plugins = commands.config().get("TaskPlugin", "")
    except SlurmError:
        plugins = ""
    if "cgroup" not in plugins:
        yield Finding("slurm cgroup", WARN, f"TaskPlugin={plugins or '?'}: without task/cgroup SLURM may not enforce "
                                            f"--mem (only sample it), and an OOM kill may not be told apart",
                      "ask the admins; the probes' own soft limit still applies")


def _node_names(text: str) -> set[str]:
    return expand_hostlist(text)


def job_memories(spec, usable: int, compare: bool = False) -> list[tuple[str, int]]:
    """Every --mem the run will ask sbatch for: each probe's (the cap) and the warm-up's (up to twice the cap),
    where the command about to run (``compare``: the matrix; else the ladder) has one."""
    plan = plans.resolve(spec, usable)
    if plan.cap_bytes is None:
        return []
    out = [("each probe", plan.cap_bytes)]
    warmup = spec.compare.warmup if compare and spec.compare is not None else spec.warmup
    if warmup and warmup_cap(plan) != plan.cap_bytes:
        out.append(("the warm-up", warmup_cap(plan)))
    return out


def memory_limits(part: dict, qos: dict[str, dict[str, int]], cpus: int,
                  enforce: str = "") -> list[tuple[str, int, bool]]:
    """The limits a job's --mem must fit, as (SLURM's words, bytes, enforced): the partition's MaxMemPerNode (or
    MaxMemPerCPU times the job's CPUs) — over it sbatch refuses the job (EnforcePartLimits) or it pends forever
    (Reason=MaxMemPerLimit, measured) — and each QOS's MaxTRES / MaxTRESPerNode mem, which binds only where
    ``AccountingStorageEnforce`` has limits, qos or safe (without, the job runs past it: measured)."""
    out = []
    name = part.get("PartitionName", "?")
    if part.get("MaxMemPerNode", "").isdigit():
        out.append((f"partition {name}'s MaxMemPerNode={part['MaxMemPerNode']}M", int(part["MaxMemPerNode"]) * MIB,
                    True))
    if part.get("MaxMemPerCPU", "").isdigit():  # SLURM gives such a job more CPUs rather than refusing it
        out.append((f"partition {name}'s MaxMemPerCPU={part['MaxMemPerCPU']}M x {cpus} CPU(s) per task (SLURM "
                    f"raises the job's CPUs to fit)", int(part["MaxMemPerCPU"]) * MIB * cpus, False))
    binding = bool({"limits", "qos", "safe"} & {word.strip() for word in enforce.lower().split(",")})
    for qos_name, limits in qos.items():
        for field_name, limit in limits.items():
            out.append((f"QOS {qos_name}'s {field_name} mem={math.ceil(limit / MIB)}M", limit, binding))
    return out


@check("slurm memory", executor="slurm")
def memory(ctx: Context) -> Iterator[Finding]:
    """Each --mem the run asks for (the probes', the warm-up's) against the partition's and the QOS's limits and
    the nodes' RealMemory: found here, not by sbatch's refusal (or a job pending forever) at the first rung."""
    if not _ready(ctx):
        return
    s = ctx.spec.executor.slurm
    try:
        parts = commands.partitions(s.partition)
        nodes = commands.show("node")
    except SlurmError as exc:
        yield Finding("slurm memory", WARN, f"not checked: {exc}")
        return
    if not parts:
        return  # the partition check says so
    part = parts[0]
    names = _node_names(part.get("Nodes", ""))
    real = [int(n["RealMemory"]) * MIB for n in nodes
            if n.get("NodeName") in names and n.get("RealMemory", "").isdigit()]
    # percentages resolve as the run resolves them: against the executor's view of the partition's nodes
    asks = job_memories(ctx.spec, SlurmExecutor(s).usable_memory(), compare=bool(ctx.notes.get("compare")))
    if not asks:
        yield Finding("slurm memory", WARN, "no memory.cap: the jobs get the partition's default memory "
                                            "(DefMemPerCPU/DefMemPerNode) and SLURM kills them there",
                      "set memory.cap: it becomes the job's --mem")
        return
    wanted = [q for q in (s.qos, part.get("QoS", "")) if q and q not in ("N/A", "(null)")]
    qos: dict[str, dict[str, int]] = {}
    note = ""
    if wanted:
        try:
            qos = commands.qos_memory(list(dict.fromkeys(wanted)))
        except SlurmError as exc:
            note = f"; QOS {', '.join(wanted)} not checked ({exc})"
    try:
        enforce = commands.config().get("AccountingStorageEnforce", "")
    except SlurmError:
        enforce = ""
    limits = memory_limits(part, qos, s.cpus_per_task, enforce)
    if real:
        limits.append((f"the largest node of {part.get('PartitionName')} (RealMemory={max(real) // MIB}M)", max(real),
                       True))
    unenforced = []
    for what, ask in asks:
        for words, limit, enforced in limits:
            if ask <= limit:
                continue
            if not enforced:
                unenforced.append(f"{what} asks --mem={math.ceil(ask / MIB)}M, over {words}" + (
                    "" if "CPU" in words else f", which this cluster does not enforce "
                                              f"(AccountingStorageEnforce={enforce or 'none'})"))
                continue
            fix = ("lower memory.cap" + (" (the warm-up asks up to twice the cap, within rss_limit), or set "
                                         "warmup: false" if what == "the warm-up" else "")
                   + ", or choose another partition or QOS")
            yield Finding("slurm memory", FAIL, f"{what} asks --mem={math.ceil(ask / MIB)}M, over {words}: "
                                                f"sbatch would refuse the job, or it would pend forever", fix)
            return
    if unenforced:
        note += "; " + "; ".join(unenforced)
    shown = ", ".join(f"{what} --mem={math.ceil(ask / MIB)}M" for what, ask in asks)
    within = "; ".join(words for words, _, enforced in limits if enforced) or "no limit set"
    yield Finding("slurm memory", OK if not note else WARN, f"{shown}: within {within}{note}")


ROUNDTRIP = """#!{python}
# hlrp-ladder preflight: does a node see the runs folder, and can its Python run the probe runner?
import importlib.util, json, os, platform, sys
out = {{"host": platform.node(), "token": {token!r},
       "runner": importlib.util.find_spec("hlrp_ladder.probe.node") is not None,
       "module": {module!r} and importlib.util.find_spec({module!r}) is not None}}
with open({answer!r}, "w") as f:
    json.dump(out, f)
"""


@check("slurm shared runs dir", executor="slurm")
def shared_runs_dir(ctx: Context) -> Iterator[Finding]:
    if not _ready(ctx):
        return
    base = Path(ctx.spec.runs_dir).expanduser()
    try:
        base.mkdir(parents=True, exist_ok=True)
        folder = Path(os.path.abspath(base / f".preflight-{uuid.uuid4().hex[:8]}"))
        folder.mkdir()
    except OSError as exc:
        yield Finding("slurm shared runs dir", FAIL, f"cannot write {base}: {exc.strerror or exc}")
        return
    token = uuid.uuid4().hex
    argv = ctx.spec.trainer_command()
    module = argv[2] if len(argv) >= 3 and argv[1] == "-m" else ""
    script = folder / "roundtrip.py"
    answer = folder / "answer.json"
    script.write_text(ROUNDTRIP.format(python=sys.executable, token=token, module=module, answer=str(answer)))
    script.chmod(0o755)
    s = ctx.spec.executor.slurm
    args = [f"--job-name=hlrp-preflight-{ctx.spec.name}", f"--output={folder / 'roundtrip.log'}", "--time=2",
            "--mem=200M", f"--chdir={folder}", "--cpus-per-task=1"]
    for flag, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos)):
        if value:
            args.append(f"--{flag}={value}")
    job_id = None
    try:
        job_id = commands.sbatch(args, str(script), dict(os.environ))
        deadline = time.monotonic() + ctx.spec.preflight.slurm_roundtrip_s
        watcher = Watcher()  # as a run watches its jobs: one squeue a second at most
        watcher.register(job_id)
        while time.monotonic() < deadline:
            entry = watcher.entry(job_id)
            job = entry.job
            if entry.settled:
                break
            time.sleep(0.1)
        else:
            commands.scancel(job_id)
            yield Finding("slurm shared runs dir", WARN, f"the round-trip job {job_id} did not run within "
                          f"{ctx.spec.preflight.slurm_roundtrip_s:g} s (the queue is busy?); not verified",
                          "raise preflight.slurm_roundtrip_s, or check the queue (squeue)")
            return
        for _ in range(20):  # its answer, through the shared filesystem
            if answer.exists():
                break
            time.sleep(0.25)
        yield from _judge(answer, job, base, module, sys.executable)
    except SlurmError as exc:
        yield Finding("slurm shared runs dir", FAIL, f"sbatch of the round-trip job: {exc}",
                      "check executor.slurm (partition, account, qos)")
    finally:
        for path in sorted(folder.glob("*")):
            path.unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass


def _judge(answer: Path, job, base: Path, module: str, python: str) -> Iterator[Finding]:
    import json

    try:
        seen = json.loads(answer.read_text())
    except (OSError, ValueError):
        state = job.words() if job is not None else "the job is gone"
        yield Finding("slurm shared runs dir", FAIL, f"a job on a node wrote nothing into {base} ({state}): the "
                      f"runs folder is not shared with the nodes, or {python} does not run there",
                      "set runs_dir to a shared filesystem (home, /scratch), and install hlrp-ladder where the "
                      "nodes see it")
        return
    yield Finding("slurm shared runs dir", OK, f"{seen['host']} wrote into {base}, which this host reads back")
    if not seen.get("runner"):
        yield Finding("slurm python", FAIL, f"{python} on {seen['host']} cannot import hlrp_ladder",
                      "install hlrp-ladder into a Python environment the nodes see")
    elif module and not seen.get("module"):
        yield Finding("slurm python", FAIL, f"{python} on {seen['host']} cannot import {module}",
                      "install the trainer where the nodes see it")
    else:
        yield Finding("slurm python", OK, f"{python} runs the probe runner on {seen['host']}"
                      + (f" and imports {module}" if module else ""))

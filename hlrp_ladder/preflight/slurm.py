"""The SLURM executor's preflight checks (run only for a SLURM spec): the client tools, a
controller that answers, a partition that takes the job's --mem and --time, cgroup enforcement, and the runs
folder and Python environment seen from a node — by a real round-trip job, since a login node's view proves
nothing about the nodes'."""
from __future__ import annotations

import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

from hlrp_ladder.executors.slurm import expand_hostlist, time_limit
from hlrp_ladder.executors.slurm import commands
from hlrp_ladder.executors.slurm.commands import SlurmError
from hlrp_ladder.preflight.core import FAIL, OK, WARN, Context, Finding, check
from hlrp_ladder.util.sizes import gib

MIB = 2**20


def _ready(ctx: Context) -> bool:
    """Tools there and the controller answering (the checks below need both; the first two say why not)."""
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
    settings, mem = ctx.spec.executor.slurm, ctx.spec.memory
    try:
        parts = commands.show("partition", settings.partition) if settings.partition else \
            [p for p in commands.show("partition") if p.get("Default") == "YES"]
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
    cap = mem.cap_bytes(1 << 62) if mem.cap and "%" not in str(mem.cap) else None
    if cap is None:
        yield Finding("slurm memory", WARN, "no memory.cap: the jobs get the partition's default memory "
                                            "(DefMemPerCPU/DefMemPerNode) and SLURM kills them there",
                      "set memory.cap: it becomes the job's --mem")
    else:
        max_node = part.get("MaxMemPerNode", "UNLIMITED")
        if max_node.isdigit() and int(max_node) * MIB < cap:
            yield Finding("slurm memory", FAIL, f"--mem={math.ceil(cap / MIB)}M is over the partition's MaxMemPerNode "
                                                f"({max_node} MiB)", "lower memory.cap or choose another partition")
            return
        nodes = commands.show("node")
        names = _node_names(part.get("Nodes", ""))
        memory = [int(n["RealMemory"]) for n in nodes if n.get("NodeName") in names and n.get("RealMemory", "").isdigit()]
        if memory and max(memory) * MIB < cap:
            yield Finding("slurm memory", FAIL, f"--mem={math.ceil(cap / MIB)}M is more than any node of {name} has "
                                                f"(largest {max(memory)} MiB): the jobs would never start",
                          "lower memory.cap")
            return
        yield Finding("slurm memory", OK, f"--mem={math.ceil(cap / MIB)}M ({gib(cap)}) fits the nodes of {name} "
                                          f"(RealMemory {min(memory) if memory else '?'}-{max(memory) if memory else '?'} MiB)")
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
        while time.monotonic() < deadline:
            job = commands.job(job_id)
            if job is None or job.terminal:
                break
            time.sleep(0.5)
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

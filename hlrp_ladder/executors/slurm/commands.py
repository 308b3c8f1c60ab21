"""The SLURM client tools, as argv lists, and what their answers mean.

Why the CLI tools and not a library: submitit (the ecosystem's anchor) tracks job state through ``sacct`` only,
which needs slurmdbd and its database, and reads JobID/State/NodeList — not ExitCode, DerivedExitCode or
Reason, which tell an OOM kill (``OUT_OF_MEMORY``, ``0:125``) from the rest; it also submits pickled callables
into a folder layout of its own. A probe is an argv and a folder, so four tools serve it directly:
``sbatch --parsable`` to submit, ``squeue`` for the state of all of a run's jobs in one call (no database needed;
the controller keeps a finished job for MinJobAge), ``sacct`` for the jobs that ended (their DerivedExitCode and
MaxRSS) or that the controller has forgotten (where accounting exists), and ``scancel``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass, replace
from typing import Optional

TIMEOUT_S = 20.0
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
TOOLS = ("sbatch", "scontrol", "scancel", "squeue")


class SlurmError(RuntimeError):
    """A SLURM tool failed; ``str()`` is its one line."""


CALLS: Counter = Counter()   # every SLURM tool this process ran, by name: the run's record of its citizenship


def run(argv: list[str], env: Optional[dict] = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    CALLS[argv[0]] += 1
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]}: not installed here (the SLURM client tools are needed)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(argv[:2])}: no answer within {timeout:g} s (is slurmctld up?)") from None


def _one_line(res: subprocess.CompletedProcess) -> str:
    text = (res.stderr or res.stdout or "").strip().splitlines()
    return text[-1] if text else f"exit {res.returncode}"


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def sbatch(args: list[str], script: str, env: dict) -> str:
    """Submit; the job id. ``args`` are sbatch options, each one argv item."""
    res = run(["sbatch", "--parsable", *args, script], env=env)
    if res.returncode != 0:
        raise SlurmError(_one_line(res))
    return res.stdout.strip().split(";")[0]   # "17" or "17;cluster"


@dataclass(frozen=True)
class Job:
    """What the controller (or accounting) says about one job."""
    job_id: str
    state: str                          # JobState: PENDING, RUNNING, OUT_OF_MEMORY, ...
    reason: str = ""                    # Reason: None, Resources, PartitionDown, OutOfMemory, ...
    exit_code: str = ""                 # ExitCode "0:125" (exit status : signal)
    derived_exit_code: str = ""         # DerivedExitCode, where shown
    node: str = ""                      # NodeList / BatchHost
    source: str = "squeue"              # squeue | scontrol | sacct | squeue+sacct
    max_rss: str = ""                   # sacct's MaxRSS of the batch step ("512M"), once the job ended

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def with_accounting(self, booked: "Job") -> "Job":
        """The controller's view completed by accounting's (DerivedExitCode, MaxRSS; its state once final)."""
        return replace(self, state=booked.state if booked.terminal else self.state,
                       derived_exit_code=booked.derived_exit_code or self.derived_exit_code,
                       reason=self.reason or booked.reason, node=self.node or booked.node,
                       max_rss=booked.max_rss, source=f"{self.source}+sacct")

    def words(self) -> str:
        """SLURM's own words, for the evidence: 'SLURM job 17: OUT_OF_MEMORY (Reason=OutOfMemory), ExitCode 0:125'."""
        reason = f" (Reason={self.reason})" if self.reason and self.reason != "None" else ""
        derived = f", DerivedExitCode {self.derived_exit_code}" if self.derived_exit_code not in ("", "0:0") else ""
        node = f" on {self.node}" if self.node and self.node not in ("(null)", "None assigned", "n/a") else ""
        # sacct samples a step's memory (JobAcctGatherFrequency): a step shorter than that shows 0
        rss = "" if not self.max_rss else f", MaxRSS {self.max_rss} (sacct)" if self.max_rss != "0" else \
            ", MaxRSS 0 (sacct: the job ended before its first sample)"
        origin = " (from accounting)" if self.source == "sacct" else ""  # the controller had forgotten it
        modulo = " (sacct's: modulo 128)" if self.source == "sacct" and self.exit_code.split(":")[0] not in ("", "0") \
            else ""
        return (f"SLURM job {self.job_id}{origin}: {self.state}{reason}, ExitCode {self.exit_code or '?'}{modulo}"
                f"{derived}{node}{rss}")


_PAIR = re.compile(r"(\w+)=(\S*)")


QUEUE_FIELDS = ("JobID", "State", "Reason", "exit_code", "DerivedEC", "BatchHost")


def queue(job_ids: list[str]) -> dict[str, Job]:
    """The controller's view of ``job_ids`` in one ``squeue`` call: running, pending and ended jobs (``-t all``:
    an ended job stays until MinJobAge); a job it no longer knows is absent. ``--me --local`` with a list of ids
    costs the controller two RPCs (REQUEST_JOB_USER_INFO, which returns this user's jobs only, and
    REQUEST_PARTITION_INFO) whatever their number; one id alone would cost three (squeue asks for it singly, with
    the federation's info), so a lone id is listed twice."""
    if not job_ids:
        return {}
    ids = list(dict.fromkeys(job_ids))
    listed = ids * 2 if len(ids) == 1 else ids
    fmt = ",".join(f"{name}:|" for name in QUEUE_FIELDS)  # ':|' : no padding, '|' after each field
    # SQUEUE_PARTITION, SQUEUE_NAMES, ... in the user's environment would filter our own jobs out of sight
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUEUE_")}
    res = run(["squeue", "-h", "--me", "--local", "-t", "all", "-j", ",".join(listed), "-O", fmt], env=env)
    if res.returncode != 0:
        if "Invalid job id" in (res.stderr + res.stdout):
            return {}   # none of them is known any more
        raise SlurmError(_one_line(res))
    return parse_queue(res.stdout, ids)


def parse_queue(text: str, job_ids: list[str]) -> dict[str, Job]:
    """squeue's ``-O 'JobID:|,State:|,...'`` lines ('25|COMPLETED|None|0|253|vm|') as Jobs; its exit codes are
    raw wait statuses (768: exit 3; 253: signal 125 with the core flag), written as scontrol writes them
    ('3:0', '0:125')."""
    wanted, out = set(job_ids), {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < len(QUEUE_FIELDS) or parts[0] not in wanted:
            continue
        job_id, state, reason, exit_code, derived, host = (p.strip() for p in parts[:len(QUEUE_FIELDS)])
        out[job_id] = Job(job_id, state.split()[0] if state else "", reason, wait_status(exit_code),
                          wait_status(derived), host, "squeue")
    return out


def wait_status(raw: str) -> str:
    """A raw wait status ('768') as SLURM's 'exit:signal' ('3:0'); anything else as it is."""
    if not raw.isdigit():
        return raw
    status = int(raw)
    return f"{status >> 8}:{status & 0x7F}"


ACCOUNTING_FIELDS = "JobID,State,ExitCode,DerivedExitCode,MaxRSS,Reason,NodeList"  # as tests/slurm/FACTS.md


def accounting(job_ids: list[str]) -> dict[str, Job]:
    """The accounting database's view (``sacct``, which asks slurmdbd, not the controller) of ``job_ids`` in one
    call: each job's allocation line, with its batch step's MaxRSS. Raises SlurmError when sacct fails (no
    accounting, slurmdbd down)."""
    if not job_ids:
        return {}
    if shutil.which("sacct") is None:
        raise SlurmError("sacct: not installed here")
    res = run(["sacct", "-n", "-P", "-j", ",".join(job_ids), "-o", ACCOUNTING_FIELDS])
    if res.returncode != 0:
        raise SlurmError(_one_line(res))
    return parse_accounting(res.stdout, job_ids)


def parse_accounting(text: str, job_ids: list[str]) -> dict[str, Job]:
    """sacct's ``-P`` lines (``ACCOUNTING_FIELDS``) as one Job per job: its allocation line
    ('24|OUT_OF_MEMORY|0:125|0:0||None|vm'), with its batch step's MaxRSS ('29.batch|CANCELLED|0:15||404K||vm').
    sacct writes exit codes above 128 modulo 128 (143 -> '15:0'); the controller's are kept where it still knows
    the job."""
    jobs: dict[str, list[str]] = {}
    rss: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 7:
            continue
        job_id, _, step = parts[0].partition(".")
        if not step:
            jobs[job_id] = parts
        elif step == "batch" and parts[4]:
            rss[job_id] = parts[4]
    return {job_id: Job(job_id, p[1].split()[0] if p[1] else "", p[5], p[2], p[3], p[6], "sacct",
                        rss.get(job_id, p[4]))
            for job_id, p in jobs.items() if job_id in set(job_ids)}


def scancel(job_id: "str | list[str]", batch_signal: Optional[str] = None) -> None:
    """Cancel a job (or several, in one call); with ``batch_signal`` only send that signal to its batch script
    (our runner), which then stops the probe the way its request says (at once, or with a grace for the long
    run)."""
    ids = [job_id] if isinstance(job_id, str) else list(job_id)
    if not ids:
        return
    argv = ["scancel", *ids] if batch_signal is None else ["scancel", "--batch", f"--signal={batch_signal}", *ids]
    res = run(argv)
    if res.returncode != 0 and "already completing or completed" not in (res.stderr + res.stdout) \
            and "Invalid job id" not in (res.stderr + res.stdout):
        raise SlurmError(_one_line(res))


def ping() -> Optional[str]:
    """None if the controller answers, else why not."""
    try:
        res = run(["scontrol", "ping"], timeout=10)
    except SlurmError as exc:
        return str(exc)
    return None if "is UP" in res.stdout else _one_line(res)


_SHOWN: dict[tuple[str, Optional[str]], list[dict]] = {}
_SHOWN_LOCK = threading.Lock()


def show(kind: str, name: Optional[str] = None) -> list[dict]:
    """``scontrol -o show partition|node [name]`` as one dict per line; read once per process (preflight's checks,
    run concurrently, and the executor all ask at the start of a run: one RPC each, not one per asker)."""
    with _SHOWN_LOCK:
        if (kind, name) not in _SHOWN:
            res = run(["scontrol", "-o", "show", kind, *([name] if name else [])])
            if res.returncode != 0:
                raise SlurmError(_one_line(res))
            _SHOWN[(kind, name)] = [dict(_PAIR.findall(line)) for line in res.stdout.splitlines() if line.strip()]
        return [dict(item) for item in _SHOWN[(kind, name)]]


def partitions(name: Optional[str]) -> list[dict]:
    """The partition named (``executor.slurm.partition``), else the default one(s), as ``show`` gives them."""
    return show("partition", name) if name else [p for p in show("partition") if p.get("Default") == "YES"]


def qos_memory(names: list[str]) -> dict[str, dict[str, int]]:
    """Each QOS's memory limits in bytes ({'normal': {'MaxTRES': ..., 'MaxTRESPerNode': ...}}), from ``sacctmgr``
    (which asks slurmdbd). Raises SlurmError without accounting."""
    if not names:
        return {}
    res = run(["sacctmgr", "-n", "-P", "show", "qos", ",".join(names), "format=Name,MaxTRES,MaxTRESPerNode"])
    if res.returncode != 0:
        raise SlurmError(_one_line(res))
    out: dict[str, dict[str, int]] = {}
    for line in res.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        limits = {}
        for field_name, tres in (("MaxTRES", parts[1]), ("MaxTRESPerNode", parts[2])):
            mem = dict(item.partition("=")[::2] for item in tres.split(",") if "=" in item).get("mem")
            if mem:
                limits[field_name] = tres_bytes(mem)
        out[parts[0]] = limits
    return out


def tres_bytes(text: str) -> int:
    """A TRES memory amount ('500M', '2G', '1T', '300' = MiB) in bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text) * 2**20)


def config() -> dict:
    """``scontrol show config`` as a dict (keys as SLURM prints them)."""
    res = run(["scontrol", "show", "config"])
    if res.returncode != 0:
        raise SlurmError(_one_line(res))
    out = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def minutes(text: str) -> Optional[int]:
    """A SLURM time ('30', '1:30:00', '2-00:00:00', 'UNLIMITED') in minutes; None for no limit."""
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, s = parts
    elif len(parts) == 2:
        h, m, s = 0, parts[0], parts[1]
    else:
        h, m, s = 0, parts[0], 0
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


def format_minutes(total: int) -> str:
    """Minutes as SLURM's D-HH:MM:SS."""
    days, rest = divmod(max(1, int(total)), 24 * 60)
    return f"{days}-{rest // 60:02d}:{rest % 60:02d}:00" if days else f"{rest // 60:02d}:{rest % 60:02d}:00"

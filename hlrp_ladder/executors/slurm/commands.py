"""The SLURM client tools, as argv lists, and what their answers mean.

Why the CLI tools and not a library: submitit (the ecosystem's anchor) tracks job state through ``sacct`` only,
which needs slurmdbd and its database, and reads JobID/State/NodeList — not ExitCode, DerivedExitCode or
Reason, which tell an OOM kill (``OUT_OF_MEMORY``, ``0:125``) from the rest; it also submits pickled callables
into a folder layout of its own. A probe is an argv and a folder, so four tools serve it directly:
``sbatch --parsable`` to submit, ``scontrol -o show job`` for state (no database needed; the controller keeps a
finished job for MinJobAge), ``sacct`` once the controller has forgotten it (where accounting exists), and
``scancel``.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Optional

TIMEOUT_S = 20.0
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
TOOLS = ("sbatch", "scontrol", "scancel", "squeue")


class SlurmError(RuntimeError):
    """A SLURM tool failed; ``str()`` is its one line."""


def run(argv: list[str], env: Optional[dict] = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
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
    source: str = "scontrol"            # scontrol | sacct

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def words(self) -> str:
        """SLURM's own words, for the evidence: 'SLURM job 17: OUT_OF_MEMORY (Reason=OutOfMemory), ExitCode 0:125'."""
        reason = f" (Reason={self.reason})" if self.reason and self.reason != "None" else ""
        derived = f", DerivedExitCode {self.derived_exit_code}" if self.derived_exit_code not in ("", "0:0") else ""
        node = f" on {self.node}" if self.node and self.node != "(null)" else ""
        return f"SLURM job {self.job_id}: {self.state}{reason}, ExitCode {self.exit_code or '?'}{derived}{node}"


_PAIR = re.compile(r"(\w+)=(\S*)")


def show_job(job_id: str) -> Optional[Job]:
    """The controller's view of a job (``scontrol -o show job``); None once it has forgotten the job."""
    res = run(["scontrol", "-o", "show", "job", job_id])
    if res.returncode != 0:
        if "Invalid job id" in (res.stderr + res.stdout):
            return None
        raise SlurmError(_one_line(res))
    fields = dict(_PAIR.findall(res.stdout))
    state = fields.get("JobState", "")
    if not state:
        return None
    return Job(job_id, state, fields.get("Reason", ""), fields.get("ExitCode", ""), fields.get("DerivedExitCode", ""),
               fields.get("BatchHost") or fields.get("NodeList", ""))


def accounting(job_id: str) -> Optional[Job]:
    """The accounting database's view (``sacct``), where there is one; None without accounting or record."""
    if shutil.which("sacct") is None:
        return None
    try:
        res = run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode,DerivedExitCode,NodeList,Reason"])
    except SlurmError:
        return None
    if res.returncode != 0:
        return None
    for line in res.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 5 and parts[0] == job_id:
            state = parts[1].split()[0]  # "CANCELLED by 0" -> CANCELLED
            return Job(job_id, state, parts[5] if len(parts) > 5 else "", parts[2], parts[3], parts[4], "sacct")
    return None


def job(job_id: str) -> Optional[Job]:
    """The job's state from the controller, else from accounting; None if neither knows it."""
    return show_job(job_id) or accounting(job_id)


def scancel(job_id: str, batch_signal: Optional[str] = None) -> None:
    """Cancel a job; with ``batch_signal`` only send that signal to its batch script (our runner), which then
    stops the probe the way its request says (at once, or with a grace for the long run)."""
    argv = ["scancel", job_id] if batch_signal is None else ["scancel", "--batch", f"--signal={batch_signal}", job_id]
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


def show(kind: str, name: Optional[str] = None) -> list[dict]:
    """``scontrol -o show partition|node [name]`` as one dict per line."""
    res = run(["scontrol", "-o", "show", kind, *([name] if name else [])])
    if res.returncode != 0:
        raise SlurmError(_one_line(res))
    return [dict(_PAIR.findall(line)) for line in res.stdout.splitlines() if line.strip()]


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

"""What the tests share besides fixtures: paths, the CLI run as a user would, the fixtures' programs, an ordinary
user's environment and a real SLURM's handle, and waiting on a state with a deadline. conftest.py holds the
fixtures and imports what it needs from here; tests import from here, never from conftest."""
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

ROOT = Path(__file__).resolve().parent.parent
MEMHOG = ROOT / "tests" / "fixtures" / "memhog.py"
SLURM_SCRIPT = ROOT / "tests" / "slurm" / "cluster.sh"
NOBODY = "nobody"

T = TypeVar("T")


def memhog(*args: str) -> list[str]:
    return [sys.executable, str(MEMHOG), *args]


def cli(*args: str, cwd=None, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    """Run the real CLI as a user would."""
    return subprocess.run([sys.executable, "-m", "hlrp_ladder", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "the state", every: float = 0.05) -> T:
    """``predicate()``'s first truthy value, polled every ``every`` s; an AssertionError naming ``what`` (and
    the last value seen) once ``timeout`` s have passed without one. The way a test waits for a state to be
    reached (a file written, a process gone) instead of sleeping for a guessed time."""
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last seen: {found!r})")
        time.sleep(every)


def start_until(*args: str, cwd: Path, pattern: str, count: int, timeout=60.0) -> subprocess.Popen:
    """``hlrp-ladder ARGS`` started in the background, returned once ``count`` files under ``cwd`` match the glob
    ``pattern``: a run caught mid-way, to be signalled by the test. Fails (killing it) if that never happens
    within ``timeout`` s or the run ends first."""
    proc = subprocess.Popen([sys.executable, "-m", "hlrp_ladder", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def reached() -> bool:
        if len(list(Path(cwd).glob(pattern))) >= count:
            return True
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"hlrp-ladder {' '.join(args)} ended (exit {proc.returncode}) before {count} x "
                                 f"{pattern}: {err[-2000:]}")
        return False

    try:
        wait_for(reached, timeout, f"{count} x {pattern}")
    except AssertionError:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        raise
    return proc


def alive_with(marker: str) -> list:
    """The processes (not zombies) whose command line carries ``marker``, this one aside."""
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and marker in " ".join(proc.info["cmdline"] or []) and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            pass
    return out


def running_pid(path: Path) -> Optional[int]:
    """The trainer's pid from a probe folder's ``running.json`` once it has been spawned (the file is first
    written before the spawn, without a pid), else None."""
    import json

    try:
        return json.loads(path.read_text()).get("pid")
    except (OSError, ValueError):
        return None


def log_has(path: Path, text: str) -> bool:
    """Whether the file at ``path`` (a probe's log.txt, say) exists and contains ``text``."""
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


class UserEnv:
    """Runs the CLI as nobody: the process drops to uid/gid 65534 itself (so signals reach it directly), after
    an optional ``before`` step that still runs as root (joining a cgroup root prepared, say)."""

    def __init__(self, python: Path, work: Path, memhog: Path, uid: int, pythonpath: str = ""):
        self.python, self.work, self.memhog, self.uid, self.pythonpath = python, work, memhog, uid, pythonpath

    def env(self, extra: Optional[dict] = None) -> dict:
        env = {**os.environ, "HOME": str(self.work), "MPLCONFIGDIR": str(self.work / ".mpl"), **(extra or {})}
        env.pop("PYTHONPATH", None)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env

    def _drop(self, before=None):
        def setup() -> None:
            if before is not None:
                before()
            os.setgroups([])
            os.setgid(self.uid)
            os.setuid(self.uid)
        return setup

    def popen(self, *args: str, env=None, before=None, **kw) -> subprocess.Popen:
        return subprocess.Popen([str(self.python), "-m", "hlrp_ladder", *args], cwd=self.work, env=self.env(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=self._drop(before), **kw)

    def cli(self, *args: str, timeout=240, env=None, before=None) -> subprocess.CompletedProcess:
        """The CLI as nobody, from its own folder."""
        return subprocess.run([str(self.python), "-m", "hlrp_ladder", *args], cwd=self.work, capture_output=True,
                              text=True, timeout=timeout, env=self.env(env), preexec_fn=self._drop(before))


# the RPCs squeue and scontrol show send: what watching jobs costs the controller
STATUS_RPCS = ("REQUEST_JOB_INFO", "REQUEST_JOB_INFO_SINGLE", "REQUEST_JOB_USER_INFO", "REQUEST_PARTITION_INFO",
               "REQUEST_FED_INFO")


def rpc_counts() -> dict[str, int]:
    """sdiag's controller RPC counts by message type (for the tests and bench/slurm_scale.py)."""
    out, counts, on = subprocess.run(["sdiag"], capture_output=True, text=True).stdout, {}, False
    for line in out.splitlines():
        if line.startswith("Remote Procedure Call statistics by"):
            on = "message type" in line
            continue
        m = re.match(r"\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)", line)
        if on and m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def user_venv(base: Path) -> Path:
    """A venv of the system Python under ``base`` with this package installed as a cluster user would (not
    editable), readable by all; its python."""
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(base / "venv")], check=True, capture_output=True)
    res = subprocess.run([str(base / "venv" / "bin" / "pip"), "install", "-q", "--no-warn-script-location",
                          str(ROOT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    subprocess.run(["chmod", "-R", "a+rX", str(base / "venv")], check=True)
    return base / "venv" / "bin" / "python"


class Slurm:
    def __init__(self, state: Path, conf: str):
        self.state, self.conf = state, conf

    def restart_ctld(self, **knobs) -> None:
        """slurmctld restarted with its config rewritten from cluster.sh's knobs (``min_job_age=2``,
        ``accounting="none"``: SLURM_TEST_MIN_JOB_AGE, SLURM_TEST_ACCOUNTING); running jobs carry on."""
        env = {**os.environ, **{f"SLURM_TEST_{k.upper()}": str(v) for k, v in knobs.items()}}
        res = subprocess.run(["bash", str(SLURM_SCRIPT), "restart-ctld", str(self.state)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]

    @contextlib.contextmanager
    def configured(self, **knobs):
        """The cluster run with other knobs for the block, as the session started it again after."""
        self.restart_ctld(**knobs)
        try:
            yield self
        finally:
            self.restart_ctld()

    def known(self, job_id: str) -> bool:
        """Whether the controller still knows the job (it forgets an ended one after MinJobAge)."""
        return subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True).returncode == 0

    def rpcs(self) -> dict[str, int]:
        """sdiag's controller RPC counts by message type (``sdiag -r`` resets them)."""
        return rpc_counts()

    def queue(self, name_prefix: str = "hlrp-") -> list[str]:
        """Jobs still in the queue whose name starts with ``name_prefix``: 'id state name' each."""
        res = subprocess.run(["squeue", "-h", "-o", "%i %T %j"], capture_output=True, text=True)
        return [line for line in res.stdout.splitlines() if line.split()[2].startswith(name_prefix)]

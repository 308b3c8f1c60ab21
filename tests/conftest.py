"""The fixtures: a marker whose processes are killed at teardown, a writable memory cgroup, a small TFDS mixture,
an ordinary user's environment and a real SLURM. What tests import (paths, cli, UserEnv, ...) is in
tests/helpers.py."""
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import MEMHOG, NOBODY, ROOT, SLURM_SCRIPT, Slurm, UserEnv, user_venv


@pytest.fixture
def marker(request):
    """A tag unique to this test run to find its processes; whatever still carries it at teardown is killed,
    so a failing test leaves nothing running."""
    import time

    import psutil

    tag = f"tag={request.node.name[:40]}-{os.getpid()}-{time.monotonic_ns()}"
    yield tag
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if tag in " ".join(proc.info["cmdline"] or []):
                proc.kill()
        except psutil.Error:
            pass


@pytest.fixture
def need_cgroup():
    """Kernel OOM kills need a writable memory cgroup: as root (CI) this must work, so it fails, never skips."""
    if os.geteuid() != 0:
        pytest.skip("a memory cgroup needs root here")
    from hlrp_ladder.probe import cgroup

    cg, note = cgroup.create(f"pytest-check-{os.getpid()}", 64 << 20)
    assert cg is not None, f"running as root but no writable memory cgroup: {note}"
    cg.remove()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small but real TFDS mixture (all three datasets, 2 shards per split)."""
    data_dir = tmp_path_factory.mktemp("tfds")
    from trainer.data.make import make_mixture

    make_mixture(data_dir, episodes=6, val_episodes=2, steps=12, shards=2, log=lambda _: None)
    return data_dir


# ---- an ordinary user, and a real SLURM ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def user_env(tmp_path_factory):
    """What an ordinary user (nobody) can run: a venv of the system Python under /tmp with this package installed
    as a cluster user would (the light orchestrator, not editable: the checkout may sit in a folder only root
    reads), the memory-hog fixture, and a folder of their own. Needs root to prepare; CI runs as root."""
    import pwd
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("preparing an ordinary user's environment needs root")
    base = Path(tempfile.mkdtemp(prefix="hlrp-user-", dir="/tmp"))
    try:
        given = os.environ.get("HLRP_TEST_USER_PYTHON")  # a machine with no package index (the GPU machine)
        if given:
            python, path = Path(given), [str(base / "lib"), os.environ.get("HLRP_TEST_USER_PYTHONPATH", "")]
            shutil.copytree(ROOT / "hlrp_ladder", base / "lib" / "hlrp_ladder")
        else:
            python, path = user_venv(base), []
        work = base / "work"
        work.mkdir()
        shutil.copy(MEMHOG, work / "memhog.py")
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
        user = pwd.getpwnam(NOBODY)
        os.chown(work, user.pw_uid, user.pw_gid)
        os.chmod(base, 0o755)
        yield UserEnv(python, work, work / "memhog.py", user.pw_uid, ":".join(p for p in path if p))
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm():
    """A real single-node SLURM (munged, slurmctld, slurmd with proctrack/cgroup and task/cgroup), started for
    the session from tests/slurm/cluster.sh in a state folder of its own, and stopped after. As root (CI) it
    must start: it fails, never skips; without root it cannot, and is skipped."""
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("starting slurmctld and slurmd needs root")
    install = subprocess.run(["bash", str(SLURM_SCRIPT), "install"], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    state = Path(tempfile.mkdtemp(prefix="hlrp-slurm-", dir="/tmp"))
    start = subprocess.run(["bash", str(SLURM_SCRIPT), "start", str(state)], capture_output=True, text=True,
                           timeout=120)
    if start.returncode != 0:  # cluster.sh stops what it started; this makes sure, then says why
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop", str(state)], capture_output=True, timeout=120)
    assert start.returncode == 0, start.stderr[-3000:]
    conf = start.stdout.strip().splitlines()[-1].split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield Slurm(state, conf)
    finally:
        subprocess.run(["scancel", "--user=root"], capture_output=True)
        subprocess.run(["scancel", f"--user={NOBODY}"], capture_output=True)
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop", str(state)], capture_output=True, timeout=120)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        import shutil

        shutil.rmtree(state, ignore_errors=True)

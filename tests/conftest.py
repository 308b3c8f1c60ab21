import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MEMHOG = ROOT / "tests" / "fixtures" / "memhog.py"


def memhog(*args: str) -> list[str]:
    return [sys.executable, str(MEMHOG), *args]


def cli(*args: str, cwd=None, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    """Run the real CLI as a user would."""
    return subprocess.run([sys.executable, "-m", "hlrp_ladder", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


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

"""The local executor's spare runner: a runner started ahead of time, so that its start-up is not paid between
two probes. Used for every probe after the first, and never left behind."""
import json
import sys

import psutil
import pytest

from tests.helpers import MEMHOG, cli

pytestmark = pytest.mark.process


def spares() -> list:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.info["cmdline"] and proc.info["cmdline"][-2:] == ["hlrp_ladder.probe", "--stdin"]:
                out.append(proc)
        except psutil.Error:
            pass
    return out


def test_probes_after_the_first_run_in_the_spare_and_none_is_left(tmp_path):
    # a trainer that says what it got: a secret is masked in request.json, so it can only arrive through the
    # environment the spare is handed (the folder's owner-only env file)
    argv = [sys.executable, "-c", "import os; print('token=' + os.environ.get('SPARE_TOKEN', 'missing'))"]
    spec = tmp_path / "spare.yaml"
    spec.write_text(f"name: spare\ncommand: {json.dumps(argv)}\nbatch_sizes: [1, 2, 3]\nwarmup: false\n"
                    f"runs_dir: {tmp_path / 'runs'}\nenv: {{SPARE_TOKEN: s3cr3t-value}}\n")
    before = {p.pid for p in spares()}
    res = cli("run", str(spec), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    run = next((tmp_path / "runs" / "spare").iterdir())
    used = [json.loads((run / f"bs-000{bs}" / "submitted.json").read_text()).get("spare") for bs in (1, 2, 3)]
    assert used == [True, True, True]  # the first too: started when the run was configured
    for bs in (1, 2, 3):
        folder = run / f"bs-000{bs}"
        assert json.loads((folder / "request.json").read_text())["env"]["SPARE_TOKEN"] == "***"
        assert "token=s3cr3t-value" in (folder / "log.txt").read_text()
        assert not (folder / ".env.json").exists()  # read once and deleted
        assert "hlrp-ladder probe runner" in (folder / "runner.log").read_text()
    assert {p.pid for p in spares()} <= before  # the spare started for a fourth probe is gone

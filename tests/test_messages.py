"""The smaller messages a newcomer met with a third-party trainer (issue: a third-party trainer, end to end), each
as it reads now. Pure: no processes."""
import io
import time

import pytest
import yaml
from rich.console import Console

from hlrp_ladder.executors.slurm import SlurmHandle
from hlrp_ladder.executors.slurm.watcher import Watcher
from hlrp_ladder.executors.slurm.commands import Job
from hlrp_ladder.overnight.status import status_lines
from hlrp_ladder.preflight import checks
from hlrp_ladder.preflight.core import Context
from hlrp_ladder.probe.folder import Sample
from hlrp_ladder.records import ProbeRequest
from hlrp_ladder.run.live import LiveView
from hlrp_ladder.run.store import RunStore, StoreError
from hlrp_ladder.spec import parse_spec
from hlrp_ladder.compare.matrix import summary_lines

pytestmark = pytest.mark.pure


def spec(**extra):
    return parse_spec(yaml.safe_dump({"name": "t", "command": ["python3", "t.py"], "batch_sizes": [1, 2], **extra}),
                      "t.yaml")


def test_a_headroom_of_zero_is_a_size_and_a_cap_of_zero_is_not():
    assert spec(memory={"headroom": "0MiB", "gpu": {"headroom": 0}}).memory.headroom == "0MiB"
    with pytest.raises(Exception, match="memory.cap: '0MiB' is not a positive size"):
        spec(memory={"cap": "0MiB"})


def test_validate_of_a_compare_at_the_pick_shows_no_batch_size_of_zero():
    s = spec(batch_size_key="--batch_size", compare={"batch_size": "pick", "variants": {"a": {}, "b": {"--x": 1}}})
    lines = summary_lines(s)
    assert any("--batch_size=<pick>" in line for line in lines) and not any("--batch_size=0" in line for line in lines)


def test_preflight_of_a_slurm_spec_does_not_promise_a_tmux_session():
    s = spec(executor={"kind": "slurm"}, overnight={"max_steps": 10})
    found = {f.check: f.detail for f in checks.overnight(Context(s))}
    assert "starts as a SLURM job" in found["overnight start"] and "overnight tmux" not in found


def test_the_live_view_shows_no_sample_taken_after_the_tree_ended(tmp_path):
    buf = io.StringIO()
    view = LiveView(Console(file=buf, width=200, force_terminal=False))
    req = ProbeRequest(folder=tmp_path / "p", batch_size=2, phase="ladder", argv=["x"], cwd=".",
                       rss_limit_bytes=1 << 30, cgroup_name="c")
    view.start(req)
    view.rows[req.folder] = (req, None, 0.0)          # due for a plain line
    view.on_sample(req, Sample(20.0, 0, None, 0, None))
    assert "rss 0 MiB" not in buf.getvalue()
    view.on_sample(req, Sample(21.0, 300 << 20, None, 1, None))
    assert "rss 300 MiB" in buf.getvalue()


def test_a_pending_job_without_a_reason_says_none_of_it(tmp_path):
    req = ProbeRequest(folder=tmp_path / "p", batch_size=2, phase="overnight", argv=["x"], cwd=".",
                       rss_limit_bytes=1, cgroup_name="c")
    watcher = Watcher()
    handle = SlurmHandle(req, "12", time.time(), watcher)
    assert handle.where() == "SLURM job 12"                    # not answered about yet: nothing made up
    watcher.entries["12"].job = Job("12", "PENDING", reason="None")
    assert handle.where() == "SLURM job 12 (PENDING)"
    watcher.entries["12"].job = Job("12", "PENDING", reason="Resources")
    assert handle.where() == "SLURM job 12 (PENDING, Resources)"


def test_a_running_long_runs_status_says_how_old_its_figure_is():
    base = {"folder": "/r/overnight-1", "batch_size": 8, "state": "running", "tmux_session": "s", "log": "l",
            "limits": {"cap_bytes": None, "rss_limit_bytes": 4 << 30, "metric": "rss"}, "metrics": {},
            "forecast": None, "elapsed_s": 30.0, "rss_bytes": 1 << 30, "peak_rss_bytes": 1 << 30}
    assert "(heartbeat 4 s ago)" in " ".join(status_lines({**base, "heartbeat_age_s": 4.2}))
    assert "(no heartbeat yet)" in " ".join(status_lines({**base, "heartbeat_age_s": None}))


def test_no_runs_names_where_it_looked_and_how_to_point_elsewhere(tmp_path):
    with pytest.raises(StoreError, match=r"no runs .*under .*\(run from the spec's folder, or name its runs with "
                                         r"--spec SPEC or --runs-dir DIR\)"):
        RunStore.find(tmp_path, None)


def test_the_boolean_spelling_a_run_used_is_part_of_what_it_measured():
    argparse_style = dict(batch_size_key="--batch_size", overrides={"--compile": False})
    assert "--compile=False" in spec(**argparse_style).argv(2)
    assert spec(**argparse_style).fingerprint() != spec(**argparse_style, render={"bools": "lower"}).fingerprint()
    assert spec().fingerprint() == spec(render={"bools": "lower"}).fingerprint()   # the old spelling: unchanged
    assert spec(memory={"headroom": "0%"}).memory.headroom == "0%"

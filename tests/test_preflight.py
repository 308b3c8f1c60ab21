"""Each blocker reproduced for real, and the verdict and message preflight gives for it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hlrp_ladder.preflight.checks import writable_dir
from tests.helpers import MEMHOG, cli

pytestmark = pytest.mark.process


def write_spec(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def findings(res) -> dict[str, dict]:
    return {f["check"]: f for f in json.loads(res.stdout)}


def trainer_spec(tmp_path: Path, data_dir: Path, extra_overrides: str = "", extra: str = "") -> Path:
    return write_spec(tmp_path / "s.yaml", f"""\
name: pf
batch_sizes: [8, 16]
overrides:
  paths.data_dir: {data_dir}
  data.adapter.tf.tfds_read.source: local
  logging.runs_dir: {tmp_path / 'truns'}
{extra_overrides}runs_dir: {tmp_path / 'runs'}
{extra}""")


@pytest.mark.trainer
def test_ready_spec_passes(tmp_path, tiny_data):
    res = cli("preflight", str(trainer_spec(tmp_path, tiny_data)), "--json")
    assert res.returncode == 0, res.stdout
    f = findings(res)
    assert f["dataset bridge"]["status"] == "ok" and "all 4 shards present" in f["dataset bridge"]["detail"]
    assert f["probe command"]["status"] == "ok" and f["trainer config"]["status"] == "ok"


@pytest.mark.trainer
def test_deleted_shard_is_named_with_the_count_and_run_starts_nothing(tmp_path, tiny_data):
    data = tmp_path / "mirror"
    shutil.copytree(tiny_data, data)
    shard = data / "language_table" / "1.0.0" / "language_table-train.tfrecord-00001-of-00002"
    shard.unlink()
    spec = trainer_spec(tmp_path, data)
    res = cli("preflight", str(spec), "--json")
    assert res.returncode == 4
    f = findings(res)["dataset language_table"]
    assert f["status"] == "fail"
    assert f["detail"] == f"missing shard {shard} (1 of 2 shards of split 'train' missing)"
    assert "trainer.data.make" in f["fix"]
    run = cli("run", str(spec))
    assert run.returncode == 4 and "1 blocker(s)" in run.stderr and "missing shard" in run.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started, not even a run folder


@pytest.mark.trainer
def test_truncated_shard_is_caught_by_its_size(tmp_path, tiny_data):
    data = tmp_path / "mirror"
    shutil.copytree(tiny_data, data)
    shard = data / "fractal" / "1.0.0" / "fractal-val.tfrecord-00000-of-00002"
    shard.write_bytes(shard.read_bytes()[:100])
    f = findings(cli("preflight", str(trainer_spec(tmp_path, data)), "--json"))["dataset fractal"]
    assert f["status"] == "fail" and "a shard is truncated" in f["detail"]


@pytest.mark.trainer
def test_missing_checkpoint_and_unknown_override(tmp_path, tiny_data):
    spec = trainer_spec(tmp_path, tiny_data, "  model.laq.checkpoint: /nonexistent/laq.pt\n  data.loader.batchsize: 3\n")
    res = cli("preflight", str(spec), "--json")
    assert res.returncode == 4
    f = findings(res)
    assert f["file model.laq.checkpoint"]["detail"] == "/nonexistent/laq.pt does not exist"
    assert f["trainer config"]["detail"] == ("trainer: data.loader.batchsize: unknown key "
                                             "(did you mean data.loader.batch_size?)")


@pytest.mark.trainer
def test_unresolvable_host_and_unreachable_gcs(tmp_path, tiny_data):
    spec = trainer_spec(tmp_path, tiny_data, extra="preflight: {hosts: [login.cluster.invalid], network_timeout_s: 2}\n")
    spec.write_text(spec.read_text().replace("tfds_read.source: local", "tfds_read.source: gcs"))
    res = cli("preflight", str(spec), "--json")
    assert res.returncode == 4
    f = findings(res)
    assert f["host login.cluster.invalid"]["status"] == "fail" and "DNS" in f["host login.cluster.invalid"]["detail"]
    import socket
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=2).close()
        gcs_reachable = True
    except OSError:
        gcs_reachable = False
    if not gcs_reachable:  # where GCS answers, that finding is "ok" instead; the host check above still blocks
        assert f["GCS"]["status"] == "fail" and "unreachable" in f["GCS"]["detail"]
        assert "tfds_read.source=local" in f["GCS"]["fix"]


def test_probe_command_that_cannot_import_its_module(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", f"name: x\ncommand: [{sys.executable}, -m, no_such_trainer_mod]\n"
                                           f"batch_sizes: [1]\nruns_dir: {tmp_path / 'runs'}\n")
    f = findings(cli("preflight", str(spec), "--json"))["probe command"]
    assert f["status"] == "fail" and "cannot import no_such_trainer_mod" in f["detail"]
    spec.write_text("name: x\ncommand: [/nonexistent/python, x.py]\nbatch_sizes: [1]\n")
    f = findings(cli("preflight", str(spec), "--json"))["probe command"]
    assert f["status"] == "fail" and "is not an executable here" in f["detail"]


def test_limits_that_do_not_fit_this_machine(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", f"name: x\ncommand: [{sys.executable}, {MEMHOG}]\nbatch_sizes: [1]\n"
                                           f"memory: {{rss_limit: 100TiB, cap: 200TiB}}\nruns_dir: {tmp_path / 'runs'}\n")
    f = findings(cli("preflight", str(spec), "--json"))
    assert f["memory rss_limit"]["status"] == "fail" and f["memory cap"]["status"] == "fail"


def test_read_only_runs_dir_on_a_real_read_only_mount(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.fail("running as root but cannot mount a tmpfs here")
    try:
        spec = write_spec(tmp_path / "s.yaml", f"name: x\ncommand: [{sys.executable}, {MEMHOG}]\nbatch_sizes: [1]\n"
                                               f"runs_dir: {mnt / 'runs'}\noverrides: {{logging.runs_dir: {mnt}}}\n")
        res = cli("preflight", str(spec), "--json")
        assert res.returncode == 4
        f = findings(res)
        assert f["runs dir"]["status"] == "fail"
        assert f["runs dir"]["detail"] == f"cannot create {mnt / 'runs'}: cannot write in its nearest existing " \
                                          f"parent {mnt}: Read-only file system"
        # not the bundled trainer: an output folder guessed from the key's name is a warning, with the fix
        assert f["dir logging.runs_dir"]["status"] == "warn"
        assert f["dir logging.runs_dir"]["fix"] == "add the override logging.runs_dir=/tmp/x-runs_dir " \
                                                  "(or make it writable)"
    finally:
        subprocess.run(["umount", str(mnt)])


def test_unwritable_dir_for_an_unprivileged_user(tmp_path):
    """The check itself, run in a child that dropped to uid/gid 65534 (nobody): a root-owned 0755 folder."""
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    base = Path("/tmp") / f"hlrp-pf-{os.getpid()}"
    (base / "locked").mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    os.chmod(base / "locked", 0o755)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            answers = [writable_dir(base / "locked" / "runs"), writable_dir(Path("/tmp") / f"free-{os.getpid()}")]
            os.write(write, json.dumps(answers).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as handle:
            locked, free = json.loads(handle.read())
        os.waitpid(pid, 0)
        assert locked == (f"cannot create {base / 'locked' / 'runs'}: cannot write in its nearest existing parent "
                          f"{base / 'locked'}: Permission denied")
        assert free is None
        assert writable_dir(base / "locked" / "runs") is None  # root can: the user matters
    finally:
        shutil.rmtree(base, ignore_errors=True)

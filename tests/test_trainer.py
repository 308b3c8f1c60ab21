"""The reference trainer for real: TFDS files, tf.data, Lightning steps, the metrics protocol, its errors."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config
from trainer.data.layout import verify

pytestmark = pytest.mark.trainer

# Small and fast: 32 px images, a few steps; the knobs are the real ones.
FAST = ["data.adapter.tf.image_size=32", "data.adapter.tf.shuffle_buffer=50", "training.metrics_every_n_steps=2"]


def train(tmp_path: Path, data_dir: Path, *args: str, timeout=180) -> tuple[subprocess.CompletedProcess, Path]:
    metrics = tmp_path / "metrics.jsonl"
    env = {**os.environ, "HLRP_LADDER_METRICS": str(metrics)}
    res = subprocess.run([sys.executable, "-m", "trainer.train", f"paths.data_dir={data_dir}",
                          f"logging.runs_dir={tmp_path / 'truns'}", *FAST, *args],
                         capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    return res, metrics


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_generated_mixture_is_a_real_tfds_dataset(tiny_data):
    for name in ("language_table", "bridge", "fractal"):
        folder = tiny_data / name / "1.0.0"
        assert (folder / "dataset_info.json").is_file() and (folder / "features.json").is_file()
        splits = {s.name: s for s in verify(folder)}
        assert set(splits) == {"train", "val"}
        assert len(splits["train"].files) == 2 and splits["train"].num_examples == 6


def test_train_validates_writes_metrics_and_exports_the_artifact(tmp_path, tiny_data):
    res, metrics = train(tmp_path, tiny_data, "training.max_steps=6", "training.validation.check_interval=3",
                         "training.validation.limit_batches=1", "data.loader.batch_size=4")
    assert res.returncode == 0, res.stderr[-2000:]
    ev = events(metrics)
    kinds = [e["event"] for e in ev]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert [e["step"] for e in ev if e["event"] == "val_end"] == [3, 6]
    train_ev = [e for e in ev if e["event"] == "train"]
    assert [e["step"] for e in train_ev] == [2, 4, 6]
    assert all(e["step_per_s"] > 0 and e["samples_per_s"] == pytest.approx(4 * e["step_per_s"], rel=1e-3)
               for e in train_ev)
    assert all(isinstance(e["val_loss"], float) for e in ev if e["event"] == "val_end")
    artifact = Path(ev[-1]["artifact"])
    assert artifact.name == "smolvla_shared_stage2_artifact.pt" and artifact.parent.name == "artifacts"
    import torch

    blob = torch.load(artifact, map_location="cpu", weights_only=False)
    assert blob["step"] == 6 and blob["config"]["data"]["loader"]["batch_size"] == 4
    assert any(k.startswith("vision.") for k in blob["state_dict"])


def test_python_mixing_and_language_table_config_train(tmp_path, tiny_data):
    res, metrics = train(tmp_path, tiny_data, "data=oxe_local_language_table", "training.max_steps=4",
                         "training.validation.check_interval=2", "training.validation.limit_batches=1",
                         "data.adapter.tf.mixing.strategy=python", "data.adapter.tf.mixing.mix_block_length=2",
                         "data.adapter.tf.sampling.samples_per_episode=4", "data.loader.batch_size=2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert events(metrics)[-1]["event"] == "done"


def test_laq_checkpoint_loads_or_fails_in_one_line(tmp_path, tiny_data):
    from trainer.model import save_laq_checkpoint

    ckpt = save_laq_checkpoint(tmp_path / "laq.pt", load_config([]))
    res, metrics = train(tmp_path, tiny_data, f"model.laq.checkpoint={ckpt}", "training.max_steps=2",
                         "training.validation.check_interval=2", "training.validation.limit_batches=1",
                         "data.loader.batch_size=2")
    assert res.returncode == 0, res.stderr[-2000:]
    missing = tmp_path / "nope.pt"
    res, _ = train(tmp_path, tiny_data, f"model.laq.checkpoint={missing}")
    assert res.returncode == 1
    assert res.stderr.strip() == f"trainer: error: model.laq.checkpoint: {missing} does not exist"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    res, _ = train(tmp_path, tiny_data, f"model.laq.checkpoint={junk}")
    assert res.returncode == 1 and res.stderr.strip().startswith(f"trainer: error: model.laq.checkpoint: {junk} "
                                                                 f"does not load")


def test_missing_shard_fails_with_one_line_naming_it(tmp_path, tiny_data):
    import shutil

    data = tmp_path / "mirror"
    shutil.copytree(tiny_data, data)
    shard = data / "bridge" / "1.0.0" / "bridge-train.tfrecord-00001-of-00002"
    shard.unlink()
    res, _ = train(tmp_path, data, "data.adapter.tf.tfds_read.source=local")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines == [f"trainer: error: bridge: missing shard {shard} (1 of 2 shards of split 'train' missing)"]


def _gcs_reachable() -> bool:
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=2).close()
        return True
    except OSError:
        return False


def test_gcs_source_fails_fast_when_unreachable(tmp_path, tiny_data):
    if _gcs_reachable():
        pytest.skip("this machine reaches GCS, so the unreachable path cannot be shown here")
    start = time.monotonic()
    res, _ = train(tmp_path, tiny_data, "data.adapter.tf.tfds_read.source=gcs", "data.adapter.tf.tfds_read.gcs_timeout_s=2")
    took = time.monotonic() - start
    assert res.returncode == 1
    assert "GCS is unreachable" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert took < 30, f"took {took:.1f}s: must fail fast, not hang"


def test_auto_source_falls_back_to_gcs_only_when_local_is_absent(tmp_path):
    if _gcs_reachable():
        pytest.skip("this machine reaches GCS")
    res, _ = train(tmp_path, tmp_path / "empty", "data.adapter.tf.tfds_read.source=auto",
                   "data.adapter.tf.tfds_read.gcs_timeout_s=1", "paths.cache_dir=/nonexistent-never")
    assert res.returncode == 1
    assert "source=auto (auto: not found locally at" in res.stderr


@pytest.mark.parametrize("arg,message", [
    ("data.loader.batchsize=4", "trainer: data.loader.batchsize: unknown key (did you mean data.loader.batch_size?)"),
    ("data.loader.batch_size=many", "trainer: data.loader.batch_size: Input should be a valid integer"),
    ("data.adapter.tf.mixing.strategy=rust", "trainer: data.adapter.tf.mixing.strategy: Input should be 'python' or 'tf'"),
    ("data=nope", "trainer: data=nope: no such config group file"),
    ("justaword", "trainer: 'justaword': expected key=value"),
])
def test_bad_override_is_one_line_and_exit_2(arg, message):
    res = subprocess.run([sys.executable, "-m", "trainer.train", arg], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().startswith(message), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.pure
def test_every_documented_adapter_key_is_accepted():
    keys = {
        "data.adapter.tf.mixing.strategy": "python", "data.adapter.tf.mixing.mix_block_length": "8",
        "data.adapter.tf.mixing.python_prefetch_queue_size": "3",
        "data.adapter.tf.mixing.python_prefetch_min_ready_datasets": "2",
        "data.adapter.tf.prefetch.final_stream_buffer": "1", "data.adapter.tf.prefetch.per_dataset_stream_buffer": "1",
        "data.adapter.tf.prefetch.episode_queue_buffer": "1", "data.adapter.tf.pipeline.episode_concurrency": "1",
        "data.adapter.tf.pipeline.transform_parallelism": "1", "data.adapter.tf.pipeline.interleave_parallelism": "1",
        "data.adapter.tf.tfds_read.source": "local", "data.adapter.tf.sampling.samples_per_episode": "0",
        "training.validation.check_interval": "50", "training.validation.limit_batches": "2",
        "logging.use_wandb": "false", "paths.cache_dir": "/tmp/x", "experiment": "vla_smol_flow_shared",
    }
    cfg = load_config([f"{k}={v}" for k, v in keys.items()])
    assert cfg.data.adapter.tf.mixing.python_prefetch_min_ready_datasets == 2
    with pytest.raises(ConfigError):
        load_config(["data.adapter.tf.prefetch.final_stream_bufer=2"])

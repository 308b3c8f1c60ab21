"""Entry point: ``python -m trainer.train key=value ...`` (the real stage-2 trainer's override keys).

Exit codes: 0 done, 1 a runtime error with one line on stderr (missing shard, GCS unreachable, ...),
2 a bad argument (unknown key, bad value). Memory errors are left to surface as they really do.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from trainer.config import Config, ConfigError, load_config
from trainer.tfenv import quiet_tensorflow

ARTIFACT = "smolvla_shared_stage2_artifact.pt"


class TrainerError(RuntimeError):
    """A runtime problem the user can fix; the message is one line."""


def _run_dir(cfg: Config) -> Path:
    root = Path(os.path.expanduser(cfg.logging.runs_dir))
    run = root / f"{cfg.experiment}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    try:
        (run / "artifacts").mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise TrainerError(f"logging.runs_dir: cannot create {run} ({exc.strerror or exc}); "
                           f"try logging.runs_dir=/tmp/hlrp-trainer-runs") from None
    return run


def _ensure_default_data(cfg: Config) -> None:
    """Generate the bundled mixture on first use, if the config reads the default local mirror."""
    if cfg.paths.data_dir is not None or cfg.data.adapter.tf.tfds_read.source == "gcs":
        return
    from trainer.data.make import MIXTURE, make_mixture

    names = [d.name for d in cfg.data.datasets]
    if set(names) <= {s.name for s in MIXTURE}:
        make_mixture(cfg.data_dir(), names, log=lambda msg: print(f"[data] {msg}", flush=True))


def train(cfg: Config) -> Path:
    quiet_tensorflow()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    run_dir = _run_dir(cfg)
    _ensure_default_data(cfg)

    from trainer.data.adapter import DataSourceError, resolve_sources

    try:
        sources = resolve_sources(cfg)
    except DataSourceError as exc:
        raise TrainerError(str(exc)) from None

    import lightning as L
    import torch

    from trainer.loader import VLADataModule
    from trainer.metrics import MetricsWriter
    from trainer.model import SmolVLA

    torch.set_num_threads(cfg.training.num_threads or os.cpu_count() or 1)
    L.seed_everything(cfg.training.seed, verbose=False)
    try:
        model = SmolVLA(cfg)
    except ValueError as exc:  # the LAQ checkpoint does not exist or does not load
        raise TrainerError(str(exc)) from None
    metrics = MetricsWriter(cfg.data.loader.batch_size, cfg.training.metrics_every_n_steps)
    logger = False
    if cfg.logging.use_wandb:
        try:
            from lightning.pytorch.loggers import WandbLogger

            logger = WandbLogger(project=cfg.logging.wandb_project, save_dir=str(run_dir))
        except (ImportError, ModuleNotFoundError):
            print("[warn] logging.use_wandb=true but wandb is not installed; continuing without it", flush=True)
    val = cfg.training.validation
    trainer = L.Trainer(
        accelerator=cfg.training.accelerator, devices=1, precision=cfg.training.precision,
        max_steps=cfg.training.max_steps, val_check_interval=val.check_interval, check_val_every_n_epoch=None,
        limit_val_batches=val.limit_batches, num_sanity_val_steps=val.sanity_steps, logger=logger,
        callbacks=[metrics], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(run_dir), log_every_n_steps=cfg.training.metrics_every_n_steps)
    trainer.fit(model, datamodule=VLADataModule(cfg, sources))
    artifact = run_dir / "artifacts" / ARTIFACT
    torch.save({"state_dict": model.state_dict(), "config": cfg.model_dump(), "step": trainer.global_step},
               artifact)
    metrics.done(trainer.global_step, str(artifact))
    return artifact


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        cfg = load_config(argv)
    except ConfigError as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except TrainerError as exc:
        print(f"trainer: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

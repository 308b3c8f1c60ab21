"""The bundled trainer's preflight checks, registered like any other plugin (the ``hlrp_ladder.preflight`` entry
point in pyproject.toml), so the orchestrator never imports the trainer: a cluster user can install the light
orchestrator only.

For this trainer the checks are certain, not guessed from key names: it rejects unknown overrides, writes its
run folder and cache, reads every shard its data config names, and loads ``model.laq.checkpoint``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from hlrp_ladder.preflight.checks import reachable, writable_dir
from hlrp_ladder.preflight.core import FAIL, OK, WARN, Context, Finding, check, context_hook

GCS_HOST = "storage.googleapis.com"
DIR_KEYS = ("logging.runs_dir", "paths.cache_dir")
FILE_KEYS = ("model.laq.checkpoint",)
CLAIMED = DIR_KEYS + FILE_KEYS + ("paths.data_dir",)


def is_bundled_trainer(spec) -> bool:
    argv = spec.base_command()
    return spec.command is None or (len(argv) >= 3 and argv[1] == "-m" and argv[2] == "trainer.train")


@context_hook
def resolve_config(ctx: Context) -> None:
    """The trainer's config resolved from the spec's overrides (pydantic only, no TensorFlow import)."""
    spec = ctx.spec
    if not is_bundled_trainer(spec):
        return
    from trainer.config import ConfigError, load_config

    ctx.claimed.update(CLAIMED)
    ctx.notes["trainer"] = True
    args = spec.argv(spec.batch_sizes[0])[len(spec.base_command()):]
    if spec.overnight is not None:
        args += [f"{k}={v}" for k, v in spec.overnight.overrides.items()]
    try:
        ctx.notes["trainer_config"] = load_config(args)
    except ConfigError as exc:
        ctx.notes["trainer_config_error"] = f"trainer: {exc}"


def _overrides(ctx: Context) -> dict:
    items = dict(ctx.spec.overrides)
    if ctx.spec.overnight is not None:
        items.update(ctx.spec.overnight.overrides)
    return items


@check("trainer config")
def trainer_config(ctx: Context) -> Iterator[Finding]:
    if ctx.notes.get("trainer_config_error"):
        yield Finding("trainer config", FAIL, ctx.notes["trainer_config_error"], "fix the override in the spec")
    elif ctx.notes.get("trainer_config") is not None:
        cfg = ctx.notes["trainer_config"]
        yield Finding("trainer config", OK, f"the bundled trainer accepts every override "
                                            f"(experiment={cfg.experiment}, data={cfg.data.name})")


@check("trainer dirs")
def trainer_dirs(ctx: Context) -> Iterator[Finding]:
    cfg = ctx.notes.get("trainer_config")
    if cfg is None:
        return
    for key, value in (("logging.runs_dir", cfg.logging.runs_dir), ("paths.cache_dir", cfg.paths.cache_dir)):
        why = writable_dir(Path(os.path.expanduser(str(value))))
        if why is None:
            yield Finding(f"trainer dir {key}", OK, f"{value} is writable")
        else:  # the trainer writes there: a certain blocker
            yield Finding(f"trainer dir {key}", FAIL, why,
                          f"add the override {key}=/tmp/{ctx.spec.name}-{key.split('.')[-1]} (or make it writable)")


@check("trainer files")
def trainer_files(ctx: Context) -> Iterator[Finding]:
    if not ctx.notes.get("trainer"):
        return
    for key in FILE_KEYS:
        value = _overrides(ctx).get(key)
        if not isinstance(value, str) or not value or value.lower() == "null":
            continue
        path = Path(os.path.expanduser(value))
        if path.is_file():
            yield Finding(f"file {key}", OK, f"{path} exists ({path.stat().st_size} bytes)")
        else:  # the trainer loads it at start: a certain blocker
            yield Finding(f"file {key}", FAIL, f"{path} does not exist", f"fix {key} in the spec's overrides")


@check("datasets")
def datasets(ctx: Context) -> Iterator[Finding]:
    cfg = ctx.notes.get("trainer_config")
    if cfg is None:
        return
    from trainer.data.layout import DatasetLayoutError, dataset_dir, verify
    from trainer.data.make import MIXTURE

    source = cfg.data.adapter.tf.tfds_read.source
    data_dir = cfg.data_dir()
    generated_on_first_use = cfg.paths.data_dir is None and source != "gcs" and \
        {d.name for d in cfg.data.datasets} <= {s.name for s in MIXTURE}
    need_gcs = []
    for entry in cfg.data.datasets:
        local = dataset_dir(data_dir, entry.name, entry.version)
        name = f"dataset {entry.name}"
        if source == "gcs" or (source == "auto" and not (local / "dataset_info.json").is_file()
                               and not generated_on_first_use):
            need_gcs.append(entry.name)
            continue
        if not (local / "dataset_info.json").is_file() and generated_on_first_use:
            yield Finding(name, WARN, f"not generated yet at {local}; the first probe would write it (seconds, "
                                      f"counted in that probe's memory and time)",
                          f"python -m trainer.data.make --data-dir {data_dir}")
            continue
        try:
            splits = verify(local)
        except DatasetLayoutError as exc:
            yield Finding(name, FAIL, str(exc), "re-copy the missing shards into the local mirror, or re-generate it "
                          f"(python -m trainer.data.make --data-dir {data_dir}); source=gcs reads it remotely")
            continue
        shards = sum(len(s.files) for s in splits)
        yield Finding(name, OK, f"{local}: {len(splits)} splits, all {shards} shards present with the recorded size")
    if need_gcs:
        why = reachable(GCS_HOST, 443, ctx.network_timeout_s)
        names = ", ".join(need_gcs)
        if why is None:
            yield Finding("GCS", OK, f"{GCS_HOST}:443 reachable for {names}")
        else:
            yield Finding("GCS", FAIL, f"{names} would be read from GCS (tfds_read.source={source}), which is "
                                       f"unreachable: {why}",
                          f"mirror the datasets under {data_dir} and set data.adapter.tf.tfds_read.source=local")

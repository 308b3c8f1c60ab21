"""Trainer configuration: pydantic models, YAML config groups and ``key=value`` overrides.

``experiment=NAME`` and ``data=NAME`` pick files under ``trainer/configs/``; every other argument is a
dotted key set on the composed config. Unknown keys and bad values raise :class:`ConfigError` with one line.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIG_DIR = Path(__file__).parent / "configs"
GROUPS = ("experiment", "data")
DEFAULT_GROUPS = {"experiment": "vla_smol_flow_shared", "data": "oxe_local_spe0"}


class ConfigError(ValueError):
    """A user mistake in the trainer's arguments; the message is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- data
class Mixing(_Strict):
    strategy: Literal["python", "tf"] = "tf"
    mix_block_length: int = Field(1, ge=1)
    python_prefetch_queue_size: int = Field(8, ge=1)
    python_prefetch_min_ready_datasets: int = Field(1, ge=1)


class Prefetch(_Strict):
    final_stream_buffer: int = Field(2, ge=0)
    per_dataset_stream_buffer: int = Field(2, ge=0)
    episode_queue_buffer: int = Field(4, ge=0)


class Pipeline(_Strict):
    episode_concurrency: int = Field(4, ge=1)
    transform_parallelism: int = Field(2, ge=1)
    interleave_parallelism: int = Field(2, ge=1)


class TfdsRead(_Strict):
    source: Literal["auto", "local", "gcs"] = "auto"
    gcs_data_dir: str = "gs://gresearch/robotics"
    gcs_timeout_s: float = Field(3.0, gt=0)


class Sampling(_Strict):
    samples_per_episode: int = Field(0, ge=0)


class TfAdapter(_Strict):
    mixing: Mixing = Mixing()
    prefetch: Prefetch = Prefetch()
    pipeline: Pipeline = Pipeline()
    tfds_read: TfdsRead = TfdsRead()
    sampling: Sampling = Sampling()
    shuffle_buffer: int = Field(1000, ge=0)
    val_shuffle_buffer: int = Field(0, ge=0)
    image_size: int = Field(128, ge=8)
    seed: int = 0


class Adapter(_Strict):
    tf: TfAdapter = TfAdapter()


class DatasetEntry(_Strict):
    name: str
    weight: float = Field(1.0, gt=0)
    version: str = "1.0.0"


class Loader(_Strict):
    batch_size: int = Field(8, ge=1)
    val_batch_size: Optional[int] = Field(None, ge=1)


class Data(_Strict):
    name: str = "oxe_local_spe0"
    datasets: list[DatasetEntry] = []
    adapter: Adapter = Adapter()
    loader: Loader = Loader()
    max_text_len: int = Field(32, ge=4)


# ---------------------------------------------------------------- model
class Vision(_Strict):
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    patch_size: int = 8


class Language(_Strict):
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256


class ActionHead(_Strict):
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    chunk_size: int = Field(8, ge=1)
    action_dim: int = Field(8, ge=1)


class Laq(_Strict):
    checkpoint: Optional[str] = None
    latent_dim: int = 16
    loss_weight: float = 0.1


class Model(_Strict):
    vision: Vision = Vision()
    language: Language = Language()
    action_head: ActionHead = ActionHead()
    laq: Laq = Laq()
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"


# ---------------------------------------------------------------- training
class Validation(_Strict):
    check_interval: int = Field(50, ge=1)
    limit_batches: int = Field(2, ge=1)
    sanity_steps: int = Field(0, ge=0)


class Training(_Strict):
    max_steps: int = Field(220, ge=1)
    validation: Validation = Validation()
    lr: float = Field(3e-4, gt=0)
    seed: int = 0
    accelerator: str = "auto"
    precision: str = "32-true"
    num_threads: int = Field(0, ge=0)  # torch threads; 0 = one per core
    metrics_every_n_steps: int = Field(5, ge=1)


class Logging(_Strict):
    runs_dir: str = "runs/trainer"
    use_wandb: bool = False
    wandb_project: str = "hlrp"


class Paths(_Strict):
    cache_dir: str = "~/.cache/hlrp-ladder"
    data_dir: Optional[str] = None  # default: <cache_dir>/tfds


class Config(_Strict):
    experiment: str = DEFAULT_GROUPS["experiment"]
    data: Data = Data()
    model: Model = Model()
    training: Training = Training()
    logging: Logging = Logging()
    paths: Paths = Paths()

    def data_dir(self) -> Path:
        raw = self.paths.data_dir or os.path.join(self.paths.cache_dir, "tfds")
        return Path(os.path.expanduser(raw))


# ---------------------------------------------------------------- composition
def _group_file(group: str, name: str) -> Path:
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        raise ConfigError(f"{group}={name}: no such config group file (known: {', '.join(known)})")
    return path


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, _known_keys(Config), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{key}: unknown key{hint}"


def _validation_message(err: ValidationError, overrides: dict[str, str]) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return _unknown_key_message(key)
    given = overrides.get(key, first.get("input"))
    return f"{key}: {first['msg']} (got {given!r})"


def parse_overrides(argv: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split ``key=value`` arguments into (group choices, dotted overrides), values still as text."""
    groups: dict[str, str] = dict(DEFAULT_GROUPS)
    overrides: dict[str, str] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith("-") or " " in key:
            raise ConfigError(f"{item!r}: expected key=value (e.g. data.loader.batch_size=16)")
        if key in GROUPS:
            groups[key] = value
        else:
            overrides[key] = value
    return groups, overrides


def load_config(argv: list[str]) -> Config:
    """Compose ``defaults <- experiment file <- data file <- overrides`` and validate it."""
    groups, overrides = parse_overrides(argv)
    tree: dict = {"experiment": groups["experiment"]}
    for group in GROUPS:
        path = _group_file(group, groups[group])
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
        # The experiment file holds the whole tree; a data file holds only the data section.
        tree = _deep_merge(tree, content if group == "experiment" else {"data": content})
    for key, text in overrides.items():
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        if key.split(".")[0] not in Config.model_fields:
            raise ConfigError(_unknown_key_message(key))
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_validation_message(err, overrides)) from None

"""What a TFDS dataset folder must hold, checked from ``dataset_info.json`` alone (no TensorFlow import).

Used by the trainer before it reads, and by ``hlrp-ladder preflight``, so a missing shard is one clear line
instead of a ``NotFoundError`` deep inside a tf.data iterator.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TFRECORD_OVERHEAD = 16  # bytes per record: length (8) + two CRCs (4 + 4)


class DatasetLayoutError(RuntimeError):
    """The dataset folder is missing, unreadable or incomplete; the message is one line."""


@dataclass(frozen=True)
class SplitFiles:
    name: str
    files: list[Path]
    num_examples: int
    num_bytes: int  # serialized example bytes as recorded by TFDS
    file_format: str


def dataset_dir(data_dir: Path, name: str, version: str) -> Path:
    return Path(data_dir) / name / version


def read_splits(ds_dir: Path) -> list[SplitFiles]:
    """The shard files each split of a prepared TFDS dataset should have."""
    info_path = ds_dir / "dataset_info.json"
    if not info_path.is_file():
        raise DatasetLayoutError(f"{info_path}: missing (dataset not prepared at {ds_dir})")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetLayoutError(f"{info_path}: unreadable ({exc})") from None
    name, fmt = info.get("name", ds_dir.parent.name), info.get("fileFormat", "tfrecord")
    out = []
    for split in info.get("splits", []):
        lengths = [int(n) for n in split.get("shardLengths", [])]
        template = split.get("filepathTemplate", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
        files = [
            ds_dir / template.replace("{DATASET}", name).replace("{SPLIT}", split["name"])
            .replace("{FILEFORMAT}", fmt).replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{len(lengths):05d}")
            for i in range(len(lengths))
        ]
        out.append(SplitFiles(split["name"], files, sum(lengths), int(split.get("numBytes", 0)), fmt))
    return out


def verify(ds_dir: Path, splits: tuple[str, ...] | None = None) -> list[SplitFiles]:
    """Raise :class:`DatasetLayoutError` naming the first missing or short shard; return the splits."""
    found = read_splits(ds_dir)
    for split in found:
        if splits is not None and split.name not in splits:
            continue
        missing = [f for f in split.files if not f.is_file()]
        if missing:
            raise DatasetLayoutError(
                f"missing shard {missing[0]} ({len(missing)} of {len(split.files)} shards of split "
                f"'{split.name}' missing)")
        if split.file_format == "tfrecord" and split.num_bytes:
            expected = split.num_bytes + TFRECORD_OVERHEAD * split.num_examples
            actual = sum(f.stat().st_size for f in split.files)
            if actual != expected:
                raise DatasetLayoutError(
                    f"split '{split.name}' of {ds_dir}: shards hold {actual} bytes, dataset_info.json "
                    f"records {expected} (a shard is truncated or from another version)")
    return found

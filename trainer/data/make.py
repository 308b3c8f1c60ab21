"""Generate a synthetic Open-X-style mixture of RLDS datasets, each written as a real TFDS dataset.

    python -m trainer.data.make --data-dir DIR [--episodes 64] [--val-episodes 8] [--shards 4]

Each dataset has its own image size and action dimension, like the real mixture. Episodes show a coloured
block that the actions push towards a goal, so the model has something learnable. Writing goes to a temporary
folder and is renamed into place, so a reader never sees a half-written dataset.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.data.layout import dataset_dir
from trainer.tfenv import quiet_tensorflow

VERSION = "1.0.0"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    height: int
    width: int
    action_dim: int
    background: tuple[int, int, int]


# Names follow Open-X; sizes are small so the default mixture is written in seconds.
MIXTURE = (
    DatasetSpec("language_table", 48, 80, 2, (200, 190, 170)),
    DatasetSpec("bridge", 64, 64, 7, (120, 110, 100)),
    DatasetSpec("fractal", 72, 88, 8, (90, 100, 120)),
)
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 220), "yellow": (230, 220, 40)}
DIRECTIONS = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}


def _episode(spec: DatasetSpec, rng, steps: int) -> dict:
    import numpy as np

    color = list(COLORS)[rng.integers(len(COLORS))]
    direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
    instruction = f"push the {color} block {direction}"
    pos = rng.uniform(0.3, 0.7, size=2)
    velocity = np.array(DIRECTIONS[direction]) * 0.4 / steps
    side = max(4, spec.height // 8)
    out = []
    for t in range(steps):
        action = np.zeros(spec.action_dim, np.float32)
        action[:2] = velocity * steps + rng.normal(0, 0.05, 2)
        if spec.action_dim > 2:
            action[2:] = rng.normal(0, 0.1, spec.action_dim - 2)
        image = np.empty((spec.height, spec.width, 3), np.uint8)
        image[:] = spec.background
        image += rng.integers(0, 12, size=image.shape, dtype=np.uint8)  # sensor noise
        r, c = int(pos[0] * (spec.height - side)), int(pos[1] * (spec.width - side))
        image[r:r + side, c:c + side] = COLORS[color]
        state = np.zeros(spec.action_dim, np.float32)
        state[:2] = pos
        out.append({
            "observation": {"image": image, "state": state},
            "action": action,
            "language_instruction": instruction,
            "is_first": t == 0, "is_last": t == steps - 1, "is_terminal": t == steps - 1,
            "reward": float(t == steps - 1), "discount": 1.0,
        })
        pos = np.clip(pos + velocity + rng.normal(0, 0.005, 2), 0.0, 1.0)
    return {"steps": out, "file_path": f"synthetic/{spec.name}"}


def _builder_class(spec: DatasetSpec, episodes: dict[str, int], mean_steps: int, seed: int):
    import numpy as np
    import tensorflow_datasets as tfds

    def _info(self):
        return tfds.rlds.rlds_base.build_info(
            tfds.rlds.rlds_base.DatasetConfig(
                name=spec.name,
                observation_info=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(spec.height, spec.width, 3), encoding_format="jpeg"),
                    "state": tfds.features.Tensor(shape=(spec.action_dim,), dtype=np.float32),
                }),
                action_info=tfds.features.Tensor(shape=(spec.action_dim,), dtype=np.float32),
                step_metadata_info={"language_instruction": tfds.features.Text()},
                episode_metadata_info={"file_path": tfds.features.Text()},
                reward_info=np.float32, discount_info=np.float32,
            ),
            self,
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in episodes}

    def _generate_examples(self, split):
        rng = np.random.default_rng([seed, hash(spec.name) % 2**31, len(split)])
        for i in range(episodes[split]):
            steps = int(rng.integers(max(2, mean_steps * 2 // 3), mean_steps * 4 // 3 + 1))
            yield f"{split}-{i:05d}", _episode(spec, rng, steps)

    camel = "".join(part.title() for part in spec.name.split("_"))
    return type(camel, (tfds.core.GeneratorBasedBuilder,), {
        "VERSION": tfds.core.Version(VERSION), "_info": _info,
        "_split_generators": _split_generators, "_generate_examples": _generate_examples,
        "__module__": __name__,
    }, skip_registration=True)


@contextlib.contextmanager
def _lock(data_dir: Path):
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".make.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def make_mixture(data_dir: Path, names: list[str] | None = None, episodes: int = 64, val_episodes: int = 8,
                 steps: int = 30, shards: int = 4, seed: int = 0, log=print) -> list[Path]:
    """Write each dataset of the mixture that is not there yet; return their folders."""
    quiet_tensorflow()
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    data_dir = Path(data_dir).expanduser()
    specs = [s for s in MIXTURE if names is None or s.name in names]
    unknown = set(names or []) - {s.name for s in MIXTURE}
    if unknown:
        raise ValueError(f"unknown dataset(s) {sorted(unknown)}; known: {[s.name for s in MIXTURE]}")
    done = []
    with _lock(data_dir):
        for spec in specs:
            final = dataset_dir(data_dir, spec.name, VERSION)
            if (final / "dataset_info.json").is_file():
                done.append(final)
                continue
            start = time.monotonic()
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-", dir=data_dir))
            try:
                cls = _builder_class(spec, {"train": episodes, "val": val_episodes}, steps, seed)
                builder = cls(data_dir=str(tmp))
                builder.download_and_prepare(
                    download_dir=str(tmp / "downloads"),
                    download_config=tfds.download.DownloadConfig(num_shards=shards, try_download_gcs=False))
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():  # an older, incomplete copy: keep it aside rather than delete data
                    final.rename(final.with_name(f"{final.name}.incomplete-{int(time.time())}"))
                (tmp / spec.name / VERSION).rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            log(f"wrote {final} ({time.monotonic() - start:.1f} s)")
            done.append(final)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.data.make", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--datasets", nargs="*", default=None, help="subset of the mixture (default: all)")
    parser.add_argument("--episodes", type=int, default=64, help="train episodes per dataset")
    parser.add_argument("--val-episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="mean steps per episode")
    parser.add_argument("--shards", type=int, default=4, help="tfrecord shards per split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        make_mixture(args.data_dir, args.datasets, args.episodes, args.val_episodes, args.steps, args.shards,
                     args.seed)
    except (ValueError, OSError) as exc:
        print(f"trainer.data.make: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The tf.data adapter: TFDS RLDS episodes -> mixed, shuffled, batched frames as numpy.

Every knob under ``data.adapter.tf`` does what its name says, in this order per dataset::

    episodes (TFDS, files shuffled) -> prefetch(episode_queue_buffer)
      -> interleave(episode -> frames, cycle_length=episode_concurrency,
                    num_parallel_calls=interleave_parallelism)   [samples_per_episode frames each; 0 = all]
      -> map(decode + resize, num_parallel_calls=transform_parallelism)
      -> shuffle(shuffle_buffer) -> batch(mix_block_length) -> prefetch(per_dataset_stream_buffer)

then the streams are mixed by weight, either inside tf.data (``mixing.strategy=tf``:
``sample_from_datasets`` over blocks) or in Python (``mixing.strategy=python``: one thread and one queue of
``python_prefetch_queue_size`` blocks per dataset, mixing starts once ``python_prefetch_min_ready_datasets``
queues hold data), and batched into a final stream prefetched ``final_stream_buffer`` batches deep.
"""
from __future__ import annotations

import queue
import socket
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from trainer.config import Config
from trainer.data.layout import DatasetLayoutError, dataset_dir, verify
from trainer.tfenv import import_tensorflow

GCS_HOST = "storage.googleapis.com"

# Batch streams started and not yet closed, per split: a diagnostic the trainer reports at each validation end,
# because a stream that is no longer read but not yet closed still holds all its buffers.
_live_lock = threading.Lock()
LIVE_STREAMS: dict[str, int] = {}
MAX_LIVE_STREAMS: dict[str, int] = {}


def live_streams() -> dict[str, dict[str, int]]:
    """{"now": streams open per split, "max": the most ever open at once per split}."""
    with _live_lock:
        return {"now": dict(LIVE_STREAMS), "max": dict(MAX_LIVE_STREAMS)}


def _counted(split: str, stream: Iterator[dict]) -> Iterator[dict]:
    with _live_lock:
        LIVE_STREAMS[split] = LIVE_STREAMS.get(split, 0) + 1
        MAX_LIVE_STREAMS[split] = max(MAX_LIVE_STREAMS.get(split, 0), LIVE_STREAMS[split])
    try:
        yield from stream
    finally:
        with _live_lock:
            LIVE_STREAMS[split] -= 1


class DataSourceError(RuntimeError):
    """The data cannot be read from where the config says; the message is one line."""


@dataclass(frozen=True)
class Source:
    name: str
    weight: float
    location: str  # local folder or gs:// path of <name>/<version>


def _gcs_reachable(timeout_s: float) -> str | None:
    """None if the GCS endpoint answers a TCP connect within the timeout, else why not."""
    try:
        with socket.create_connection((GCS_HOST, 443), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def resolve_sources(cfg: Config, splits: tuple[str, ...] = ("train", "val")) -> list[Source]:
    """Where each dataset is read from, checked before any tf.data pipeline starts (fails fast, one line)."""
    read = cfg.data.adapter.tf.tfds_read
    if not cfg.data.datasets:
        raise DataSourceError(f"data={cfg.data.name}: no datasets configured")
    out = []
    for entry in cfg.data.datasets:
        local = dataset_dir(cfg.data_dir(), entry.name, entry.version)
        use_local = read.source == "local" or (read.source == "auto" and (local / "dataset_info.json").is_file())
        if use_local:
            try:
                verify(local, splits)
            except DatasetLayoutError as exc:
                raise DataSourceError(f"{entry.name}: {exc}") from None
            out.append(Source(entry.name, entry.weight, str(local)))
            continue
        why = _gcs_reachable(read.gcs_timeout_s)
        if why is not None:
            fallback = " (auto: not found locally at " + str(local) + ")" if read.source == "auto" else ""
            raise DataSourceError(
                f"{entry.name}: data.adapter.tf.tfds_read.source={read.source}{fallback} but GCS is unreachable "
                f"({GCS_HOST}:443 {why}); use source=local with a complete mirror under paths.data_dir")
        out.append(Source(entry.name, entry.weight, f"{read.gcs_data_dir.rstrip('/')}/{entry.name}/{entry.version}"))
    return out


class FramePipeline:
    """Builds the per-dataset tf.data streams and the mixed batch stream for one split."""

    def __init__(self, cfg: Config, sources: list[Source], split: str, batch_size: int):
        self.cfg, self.sources, self.split, self.batch_size = cfg, sources, split, batch_size
        self.knobs = cfg.data.adapter.tf
        self.train = split == "train"
        self.chunk = cfg.model.action_head.chunk_size
        self.action_dim = cfg.model.action_head.action_dim

    # -- per dataset ------------------------------------------------------------------------------------------
    def _options(self, tf):
        options = tf.data.Options()
        # Autotune's background thread made iterator teardown block 6-22 s at the end of fit (measured).
        options.autotune.enabled = False
        options.deterministic = not self.train
        return options

    def dataset_stream(self, index: int):
        tf = import_tensorflow()
        import tensorflow_datasets as tfds

        knobs, src = self.knobs, self.sources[index]
        builder = tfds.builder_from_directory(src.location)
        episodes = builder.as_dataset(
            split=self.split, shuffle_files=self.train,
            decoders={"steps": {"observation": {"image": tfds.decode.SkipDecoding()}}},
            read_config=tfds.ReadConfig(shuffle_seed=knobs.seed + index, try_autocache=False,
                                        skip_prefetch=True, interleave_cycle_length=1))
        episodes = episodes.repeat()
        if knobs.prefetch.episode_queue_buffer:
            episodes = episodes.prefetch(knobs.prefetch.episode_queue_buffer)
        frames = episodes.interleave(
            lambda ep: self._episode_frames(tf, ep, index), cycle_length=knobs.pipeline.episode_concurrency,
            block_length=1, num_parallel_calls=knobs.pipeline.interleave_parallelism, deterministic=not self.train)
        frames = frames.map(lambda f: self._transform(tf, f), num_parallel_calls=knobs.pipeline.transform_parallelism,
                            deterministic=not self.train)
        shuffle = knobs.shuffle_buffer if self.train else knobs.val_shuffle_buffer
        if shuffle:
            frames = frames.shuffle(shuffle, seed=knobs.seed + index)
        blocks = frames.batch(knobs.mixing.mix_block_length, drop_remainder=True)
        if knobs.prefetch.per_dataset_stream_buffer:
            blocks = blocks.prefetch(knobs.prefetch.per_dataset_stream_buffer)
        return blocks.with_options(self._options(tf))

    def _episode_frames(self, tf, episode, index: int):
        steps = episode["steps"]
        whole = tf.data.experimental.get_single_element(steps.batch(100_000))
        actions = whole["action"]
        length = tf.shape(actions)[0]
        pad = self.action_dim - actions.shape[-1]
        # The action chunk of frame t is actions[t : t+chunk], the last action repeated past the episode's end.
        idx = tf.minimum(tf.range(length)[:, None] + tf.range(self.chunk)[None, :], length - 1)
        chunks = tf.pad(tf.gather(actions, idx), [[0, 0], [0, 0], [0, pad]])
        state = tf.pad(whole["observation"]["state"], [[0, 0], [0, pad]])
        mask = tf.concat([tf.ones([actions.shape[-1]]), tf.zeros([pad])], 0)
        frames = {
            "image": whole["observation"]["image"], "instruction": whole["language_instruction"],
            "actions": chunks, "state": state,
            "action_mask": tf.tile(mask[None], [length, 1]), "dataset": tf.fill([length], index),
        }
        n = self.knobs.sampling.samples_per_episode
        if n:
            pick = tf.random.shuffle(tf.range(length), seed=self.knobs.seed)[: tf.minimum(n, length)]
            frames = {k: tf.gather(v, pick) for k, v in frames.items()}
        return tf.data.Dataset.from_tensor_slices(frames)

    def _transform(self, tf, frame):
        size = self.knobs.image_size
        image = tf.io.decode_jpeg(frame["image"], channels=3)
        image = tf.cast(tf.image.resize(image, [size, size], antialias=False), tf.uint8)
        return {**frame, "image": image}

    # -- mixed batches ----------------------------------------------------------------------------------------
    def batches(self) -> Iterator[dict]:
        """Endless numpy batches: image uint8 [B,S,S,3], instruction bytes [B], actions [B,H,A], ..."""
        if self.knobs.mixing.strategy == "tf":
            return _counted(self.split, self._tf_mixed())
        return _counted(self.split, PythonMixer(self).batches())

    def _tf_mixed(self) -> Iterator[dict]:
        tf = import_tensorflow()
        streams = [self.dataset_stream(i) for i in range(len(self.sources))]
        weights = [s.weight for s in self.sources]
        mixed = tf.data.Dataset.sample_from_datasets(streams, weights=weights, seed=self.knobs.seed,
                                                     stop_on_empty_dataset=False)
        mixed = mixed.unbatch().batch(self.batch_size, drop_remainder=True)
        if self.knobs.prefetch.final_stream_buffer:
            mixed = mixed.prefetch(self.knobs.prefetch.final_stream_buffer)
        return mixed.with_options(self._options(tf)).as_numpy_iterator()


class PythonMixer:
    """Mixing in Python: a thread and a bounded queue per dataset, a thread assembling batches."""

    def __init__(self, pipeline: FramePipeline):
        self.p = pipeline
        knobs = pipeline.knobs
        self.stop = threading.Event()
        self.queues = [queue.Queue(maxsize=knobs.mixing.python_prefetch_queue_size) for _ in pipeline.sources]
        self.out: queue.Queue = queue.Queue(maxsize=max(1, knobs.prefetch.final_stream_buffer))
        self.error: BaseException | None = None
        self.threads: list[threading.Thread] = []

    def _put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self, index: int) -> None:
        try:
            for block in self.p.dataset_stream(index).as_numpy_iterator():
                if not self._put(self.queues[index], block):
                    return
        except BaseException as exc:  # surfaced to the consumer, not lost in a thread
            self.error = exc
            self.stop.set()

    def _mix(self) -> None:
        rng = np.random.default_rng(self.p.knobs.seed)
        weights = np.array([s.weight for s in self.p.sources], dtype=float)
        need = min(self.p.knobs.mixing.python_prefetch_min_ready_datasets, len(self.queues))
        try:
            while not self.stop.is_set() and sum(not q.empty() for q in self.queues) < need:
                self.stop.wait(0.01)
            frames: list[dict] = []
            while not self.stop.is_set():
                ready = np.array([not q.empty() for q in self.queues])
                probs = weights * ready if ready.any() else weights
                index = int(rng.choice(len(self.queues), p=probs / probs.sum()))
                try:
                    block = self.queues[index].get(timeout=0.1)
                except queue.Empty:
                    continue
                frames.extend({k: v[i] for k, v in block.items()} for i in range(len(block["image"])))
                while len(frames) >= self.p.batch_size:
                    batch = {k: np.stack([f[k] for f in frames[: self.p.batch_size]]) for k in frames[0]}
                    del frames[: self.p.batch_size]
                    if not self._put(self.out, batch):
                        return
        except BaseException as exc:
            self.error = exc
            self.stop.set()

    def batches(self) -> Iterator[dict]:
        self.threads = [threading.Thread(target=self._feed, args=(i,), daemon=True, name=f"mix-feed-{i}")
                        for i in range(len(self.queues))]
        self.threads.append(threading.Thread(target=self._mix, daemon=True, name="mix-batches"))
        for thread in self.threads:
            thread.start()
        try:
            while True:
                try:
                    yield self.out.get(timeout=0.1)
                except queue.Empty:
                    if self.error is not None:
                        raise self.error
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(timeout=5)

"""torch side of the data path: the adapter's numpy batches as a Lightning DataModule of torch tensors."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset
from transformers import ByT5Tokenizer

from trainer.config import Config
from trainer.data.adapter import FramePipeline, Source


class BatchStream(IterableDataset):
    """Endless batches of one split; each ``iter()`` builds a fresh tf.data pipeline."""

    def __init__(self, cfg: Config, sources: list[Source], split: str, batch_size: int):
        self.cfg, self.sources, self.split, self.batch_size = cfg, sources, split, batch_size
        self.tokenizer = ByT5Tokenizer()
        self._tokens: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def _tokenize(self, text: bytes) -> tuple[np.ndarray, np.ndarray]:
        # Instructions repeat a lot; tokenising each distinct one once keeps Python off the hot path.
        if text not in self._tokens:
            enc = self.tokenizer(text.decode("utf-8", "replace"), padding="max_length", truncation=True,
                                 max_length=self.cfg.data.max_text_len)
            self._tokens[text] = (np.array(enc["input_ids"]), np.array(enc["attention_mask"]))
        return self._tokens[text]

    def __iter__(self):
        for batch in FramePipeline(self.cfg, self.sources, self.split, self.batch_size).batches():
            ids, mask = zip(*(self._tokenize(bytes(t)) for t in batch["instruction"]))
            yield {
                # read-only numpy buffers from tf.data: copy before handing them to torch
                "image": torch.from_numpy(np.array(batch["image"], copy=True)),
                "input_ids": torch.from_numpy(np.stack(ids)),
                "attention_mask": torch.from_numpy(np.stack(mask)),
                "actions": torch.from_numpy(np.array(batch["actions"], copy=True)),
                "action_mask": torch.from_numpy(np.array(batch["action_mask"], copy=True)),
                "state": torch.from_numpy(np.array(batch["state"], copy=True)),
            }


class VLADataModule(L.LightningDataModule):
    def __init__(self, cfg: Config, sources: list[Source]):
        super().__init__()
        self.cfg, self.sources = cfg, sources

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        # batch_size=None: the adapter already batches; tf.data does the parallel work, so no workers.
        return DataLoader(BatchStream(self.cfg, self.sources, split, batch_size), batch_size=None, num_workers=0)

    def train_dataloader(self):
        return self._loader("train", self.cfg.data.loader.batch_size)

    def val_dataloader(self):
        loader = self.cfg.data.loader
        return self._loader("val", loader.val_batch_size or loader.batch_size)

"""A Lightning callback that writes the metrics protocol: ``trainer.callbacks.append(HlrpLadderCallback())``.

Train events every ``every_n_steps`` optimizer steps (step/s, samples/s, loss, torch's GPU figures), ``val_end``
after each validation (its ``val_key`` metric as ``val_loss``; the sanity check is skipped), ``done`` at the end.
Needs ``lightning`` (``pip install hlrp-ladder[integrations]``)."""
from __future__ import annotations

from typing import Any, Optional

import lightning as L

from hlrp_ladder.integrations import Meter


def _batch_size(batch: Any) -> Optional[int]:
    """The first dimension of the first tensor in a batch (a tensor, a tuple/list or a dict of them)."""
    items = list(batch.values()) if isinstance(batch, dict) else list(batch) if isinstance(batch, (list, tuple)) \
        else [batch]
    for item in items:
        shape = getattr(item, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    return None


class HlrpLadderCallback(L.Callback):
    def __init__(self, every_n_steps: int = 10, batch_size: Optional[int] = None, val_key: str = "val_loss"):
        self.every, self.val_key = max(1, every_n_steps), val_key
        self.meter = Meter(batch_size)

    def on_train_start(self, trainer, pl_module) -> None:
        self.meter.start(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.meter.train(step, loss=None if loss is None else float(loss),
                         batch_size=self.meter.batch_size or _batch_size(batch))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.val_key)
        self.meter.val_end(trainer.global_step, None if value is None else float(value))

    def on_train_end(self, trainer, pl_module) -> None:
        self.meter.done(trainer.global_step)

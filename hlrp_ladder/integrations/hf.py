"""A Hugging Face ``TrainerCallback`` that writes the metrics protocol: ``Trainer(..., callbacks=[HlrpLadderHF()])``.

Train events every ``every_n_steps`` steps (step/s; samples/s from the per-device batch x gradient accumulation
x processes; the latest logged loss; torch's GPU figures), ``val_end`` after each evaluation (``eval_loss`` as
``val_loss``), ``done`` at the end. Needs ``transformers`` (``pip install hlrp-ladder[integrations]``)."""
from __future__ import annotations

from typing import Optional

from transformers import TrainerCallback

from hlrp_ladder.integrations import Meter


class HlrpLadderHF(TrainerCallback):
    def __init__(self, every_n_steps: int = 10):
        self.every = max(1, every_n_steps)
        self.meter = Meter()
        self.loss: Optional[float] = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.meter.batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * \
            max(1, args.world_size)
        self.meter.start(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.meter.train(state.global_step, loss=self.loss)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get("eval_loss")
        self.meter.val_end(state.global_step, None if value is None else float(value))

    def on_train_end(self, args, state, control, **kwargs):
        self.meter.done(state.global_step)

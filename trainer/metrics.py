"""The metrics protocol: JSON lines appended to the file named by ``HLRP_LADDER_METRICS``, flushed as written.

Events (every line also has ``time``, seconds since the epoch):
  {"event": "start", "step": 0, "batch_size": B, "pid": P}
  {"event": "train", "step": S, "loss": x, "step_per_s": r, "samples_per_s": r * B}   every N steps
  {"event": "val_end", "step": S, "val_loss": x}                                        after each validation
     (the bundled trainer adds "live_streams": batch streams open now and at most, per split)
  {"event": "done", "step": S, "artifact": "/path/to/artifact.pt"}                       at the end
The same numbers go to stdout as ``key=value`` lines, for log-regex readers.
"""
from __future__ import annotations

import json
import os
import time

import lightning as L

ENV_VAR = "HLRP_LADDER_METRICS"


class MetricsWriter(L.Callback):
    def __init__(self, batch_size: int, every_n_steps: int, path: str | None = None):
        self.batch_size, self.every = batch_size, every_n_steps
        path = path if path is not None else os.environ.get(ENV_VAR)
        self.handle = open(path, "a", buffering=1) if path else None
        self.window_start: tuple[int, float] | None = None

    def emit(self, event: str, **fields) -> None:
        record = {"event": event, **fields, "time": round(time.time(), 3)}
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                         if k not in ("event", "time"))
        print(f"[{event}] {shown}", flush=True)

    def on_train_start(self, trainer, pl_module):
        self.emit("start", step=trainer.global_step, batch_size=self.batch_size, pid=os.getpid())
        self.window_start = (trainer.global_step, time.monotonic())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every or self.window_start is None:
            return
        start_step, start_t = self.window_start
        elapsed = time.monotonic() - start_t
        rate = (step - start_step) / elapsed if elapsed > 0 and step > start_step else 0.0
        loss = outputs["loss"].item() if isinstance(outputs, dict) else float(outputs)
        self.emit("train", step=step, loss=round(loss, 5), step_per_s=round(rate, 4),
                  samples_per_s=round(rate * self.batch_size, 3))
        self.window_start = (step, time.monotonic())

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        from trainer.data.adapter import live_streams

        val = trainer.callback_metrics.get("val_loss")
        self.emit("val_end", step=trainer.global_step, val_loss=None if val is None else round(float(val), 5),
                  live_streams=live_streams())
        # Time spent validating is not training throughput: restart the window.
        self.window_start = (trainer.global_step, time.monotonic())

    def done(self, step: int, artifact: str) -> None:
        self.emit("done", step=step, artifact=artifact)
        if self.handle is not None:
            self.handle.close()

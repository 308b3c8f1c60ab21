"""Speak the metrics protocol from a trainer, without regexes: :func:`emit` for a plain loop, a :class:`Meter`
that times steps, and callbacks for Lightning (``hlrp_ladder.integrations.lightning``) and Hugging Face's
``Trainer`` (``hlrp_ladder.integrations.hf``). Each writes JSON lines to the file the probe's
``HLRP_LADDER_METRICS`` names (docs/metrics-protocol.md), and nothing when it is not set: the trainer runs the same
outside a ladder; in a distributed job only rank 0 writes. Nothing but the standard library and the protocol's
names (torch is read only when the trainer already imported it).

    from hlrp_ladder.integrations import Meter
    meter = Meter(batch_size=32)
    for step in range(1, max_steps + 1):
        loss = train_step()
        meter.train(step, loss=loss.item())          # step/s and samples/s since the last call, GPU figures
        if step % check_interval == 0:
            meter.val_end(step, val_loss=validate())
    meter.done(step)
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any, Optional

from hlrp_ladder.records import METRICS_ENV

_handles: dict[str, IO[str]] = {}


def emit(event: str, **fields: Any) -> None:
    """Append one protocol event (``start``, ``train``, ``val_end``, ``done``) with ``time`` set; a no-op when
    the process runs outside a probe (no ``HLRP_LADDER_METRICS``)."""
    path = os.environ.get(METRICS_ENV)
    if not path or not _rank_zero():
        return
    handle = _handles.get(path)
    if handle is None:
        handle = _handles[path] = open(path, "a", buffering=1)
    handle.write(json.dumps({"event": event, **fields, "time": round(time.time(), 3)}) + "\n")
    handle.flush()


def _rank_zero() -> bool:
    """This process is rank 0 of a distributed job, or no rank at all: one writer per probe (every rank of a
    torchrun or srun job inherits the same metrics file)."""
    for key in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if key in os.environ:
            return os.environ[key] == "0"
    return True


def gpu_memory() -> dict[str, int]:
    """torch's own GPU figures, the largest over this process's devices (``gpu_allocated``, ``gpu_reserved``,
    ``gpu_max_reserved``, bytes) — only when the trainer has imported torch and initialised CUDA; else {}."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    out = {"gpu_allocated": 0, "gpu_reserved": 0, "gpu_max_reserved": 0}
    for index in range(torch.cuda.device_count()):
        out["gpu_allocated"] = max(out["gpu_allocated"], int(torch.cuda.memory_allocated(index)))
        out["gpu_reserved"] = max(out["gpu_reserved"], int(torch.cuda.memory_reserved(index)))
        out["gpu_max_reserved"] = max(out["gpu_max_reserved"], int(torch.cuda.max_memory_reserved(index)))
    return out


class Meter:
    """The protocol for a training loop: ``start`` on the first call, ``train`` events with the rates since the
    previous one (validation time is left out: ``val_end`` restarts the window), ``val_end``, ``done``."""

    def __init__(self, batch_size: Optional[int] = None):
        self.batch_size = batch_size
        self.window: Optional[tuple[int, float]] = None

    def start(self, step: int = 0) -> None:
        emit("start", step=step, batch_size=self.batch_size, pid=os.getpid())
        self.window = (step, time.monotonic())

    def train(self, step: int, loss: Optional[float] = None, batch_size: Optional[int] = None) -> None:
        if self.window is None:
            self.start(max(0, step - 1))
        batch = batch_size or self.batch_size
        first, since = self.window
        elapsed = time.monotonic() - since
        rate = (step - first) / elapsed if elapsed > 0 and step > first else None
        fields: dict[str, Any] = {"step": step, **gpu_memory()}
        if loss is not None:
            fields["loss"] = round(float(loss), 6)
        if rate is not None:
            fields["step_per_s"] = round(rate, 4)
            if batch:
                fields["samples_per_s"] = round(rate * batch, 3)
        emit("train", **fields)
        self.window = (step, time.monotonic())

    def val_end(self, step: int, val_loss: Optional[float] = None) -> None:
        emit("val_end", step=step, val_loss=None if val_loss is None else round(float(val_loss), 6), **gpu_memory())
        self.window = (step, time.monotonic())  # time spent validating is not training throughput

    def done(self, step: int, artifact: Optional[str] = None) -> None:
        emit("done", step=step, **({"artifact": artifact} if artifact else {}))


__all__ = ["Meter", "emit", "gpu_memory"]

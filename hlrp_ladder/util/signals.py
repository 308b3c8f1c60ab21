"""Signals that stop work in progress: set a flag the running loop polls, so a probe's tree is killed and
recorded rather than orphaned."""
from __future__ import annotations

import signal


class StopFlag:
    """SIGINT/SIGTERM (and whatever else is given) set a flag; ``stop()`` is True once one arrived."""

    def __init__(self, signals: tuple = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.raised = False
        self.signals = signals
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        for sig in self.signals:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.raised

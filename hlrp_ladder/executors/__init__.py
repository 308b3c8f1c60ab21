"""Executors start a probe and wait for it; each writes the same probe folder and returns a ProbeRecord."""
from hlrp_ladder.executors.core import Executor, ProbeRequest


def get(name: str) -> Executor:
    if name == "local":
        from hlrp_ladder.executors.local import LocalExecutor

        return LocalExecutor()
    raise ValueError(f"unknown executor {name!r}")


__all__ = ["Executor", "ProbeRequest", "get"]

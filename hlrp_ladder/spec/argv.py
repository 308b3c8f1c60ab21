"""A trainer's argv from key/value items: each ``key=value`` one argv item, values rendered the way the bundled
trainer and Hydra-style configs read them. Never a shell: the items are passed literally."""
from __future__ import annotations

import os
from typing import Union

Scalar = Union[bool, int, float, str, None]


BOOLS = {"lower": ("true", "false"), "python": ("True", "False"), "int": ("1", "0")}


def render(value: Scalar, bools: str = "lower") -> str:
    """One value as the trainer reads it: ``null``, a boolean as ``bools`` says (``lower``: true/false, as the
    bundled trainer and Hydra read them; ``python``: True/False, as argparse-style configurators that
    ``literal_eval`` their values do, and None for null there; ``int``: 1/0), or the value's own text."""
    if value is None:
        return "None" if bools == "python" else "null"
    if isinstance(value, bool):
        return BOOLS[bools][0 if value else 1]
    return str(value)


def launch(command: list[str], kind: str, ranks: int, gpus_per_task: int | None = None) -> list[str]:
    """``command`` under its launcher: torchrun (through the command's own Python when it is one, so the same
    interpreter runs every rank), srun, or as it is (none, spawn: it starts its own ranks)."""
    if kind == "torchrun":
        opts = ["--standalone", f"--nproc_per_node={ranks}"]
        if command and os.path.basename(command[0]).startswith("python"):
            return [command[0], "-m", "torch.distributed.run", *opts, *command[1:]]
        return ["torchrun", *opts, *command]
    if kind == "srun":
        return ["srun", f"--ntasks={ranks}", *([f"--gpus-per-task={gpus_per_task}"] if gpus_per_task else []),
                *command]
    return list(command)


def argv(command: list[str], items: dict[str, Scalar], bools: str = "lower") -> list[str]:
    """``command`` followed by one ``key=value`` item per entry of ``items``, in their order."""
    return list(command) + [f"{key}={render(value, bools)}" for key, value in items.items()]

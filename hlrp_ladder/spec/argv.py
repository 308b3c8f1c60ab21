"""A trainer's argv from key/value items: each ``key=value`` one argv item, values rendered the way the bundled
trainer and Hydra-style configs read them. Never a shell: the items are passed literally."""
from __future__ import annotations

from typing import Union

Scalar = Union[bool, int, float, str, None]


def render(value: Scalar) -> str:
    """One value as the trainer reads it: ``null``, ``true``/``false``, or the value's own text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def argv(command: list[str], items: dict[str, Scalar]) -> list[str]:
    """``command`` followed by one ``key=value`` item per entry of ``items``, in their order."""
    return list(command) + [f"{key}={render(value)}" for key, value in items.items()]

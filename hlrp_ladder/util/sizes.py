"""Memory sizes as people write them: ``"28GiB"``, ``"900MiB"``, ``"1.5 GB"``, ``"85%"`` (of total RAM)."""
from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")

GIB = 1024**3
MIB = 1024**2


def check(text: str) -> str:
    """Return ``text`` if it is a size or a percentage, else raise ValueError('... is not a size')."""
    resolve(text, total=1)
    return text


def check_room(text: str) -> str:
    """``check`` for a headroom: "0MiB" (none) is one too."""
    resolve(text, total=1, allow_zero=True)
    return text


def resolve(text: str | int, total: int, allow_zero: bool = False) -> int:
    """Bytes for a size; a percentage is of ``total`` bytes. ``allow_zero``: "0MiB" is a size (a headroom of
    none), where a limit of zero would be a typo."""
    if isinstance(text, int):
        return text
    match = _PERCENT.match(text)
    if match:
        pct = float(match.group(1))
        if not (0 <= pct if allow_zero else 0 < pct) or pct > 100:
            raise ValueError(f"{text!r} is not a percentage between 0 and 100")
        return int(total * pct / 100)
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. '28GiB', '900MiB' or '85%')")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{text!r} is not a positive size")
    return value


def gib(n: int | float | None, digits: int = 2) -> str:
    """Human size: GiB from 1 GiB up, MiB below (a 245 MiB cap must not read '0.24 GiB')."""
    if n is None:
        return "-"
    if abs(n) < GIB:
        return f"{n / MIB:.0f} MiB"
    return f"{n / GIB:.{digits}f} GiB"

"""Secrets in an environment or an argv: names with KEY, TOKEN, SECRET or PASSWORD are masked in every record."""
from __future__ import annotations

SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
MASK = "***"


def is_secret(name: str) -> bool:
    return any(word in name.upper() for word in SECRET_WORDS)


def mask(mapping: dict) -> dict:
    return {k: (MASK if is_secret(k) and v not in (None, "") else v) for k, v in mapping.items()}


def mask_argv(argv: list[str]) -> list[str]:
    out = []
    for item in argv:
        key, sep, value = item.partition("=")
        out.append(f"{key}={MASK}" if sep and is_secret(key) and value else item)
    return out

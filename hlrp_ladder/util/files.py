"""Files written whole or not at all (temp file + rename), readable by the team as the umask allows."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

def umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def atomic_write(path: Path, text: str, private: bool = False) -> None:
    """Write ``path`` whole or not at all. Readable by the team as the umask allows, like any file the user
    makes (``mkstemp`` alone would leave it 0600); ``private`` keeps it to the owner (a file with a secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600 if private else 0o666 & ~umask())
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON, written whole (see :func:`atomic_write`)."""
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def write_json_once(path: Path, data) -> bool:
    """Write ``path`` whole, unless it exists: False then (an executor already wrote the record — a job lost
    with its node, say — and a runner that lived on must not replace it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    atomic_write(tmp, json.dumps(data, indent=2, default=str) + "\n")
    try:
        os.link(tmp, path)  # atomic, and refuses to replace
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def write_report(out_dir: Path, title: str, fmt: str, render: dict) -> Path:
    """``out_dir/<title>.<fmt>``, its text from ``render[fmt]()`` (which may write files beside it first: a
    markdown report's plots), written whole."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{title}.{fmt}"
    atomic_write(path, render[fmt]())
    return path

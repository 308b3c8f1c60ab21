"""Files written whole or not at all (temp file + rename), readable by the team as the umask allows."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """A write failed for want of space (ENOSPC, or a quota): ``str()`` is one line naming the path and the free
    space on its filesystem."""

    def __init__(self, path: Path, cause: OSError):
        super().__init__(cause.errno, f"no space left writing {path} ({free_text(path)} free on its filesystem)")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def free_text(path: Path) -> str:
    """The free space on ``path``'s filesystem (its nearest existing parent's), for a person."""
    here = Path(path)
    while not here.exists() and here.parent != here:
        here = here.parent
    try:
        free = shutil.disk_usage(here).free
    except OSError:
        return "unknown"
    return f"{free / 2**20:.1f} MiB" if free < 2**30 else f"{free / 2**30:.1f} GiB"


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or a quota) is full."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def as_disk_full(exc: OSError) -> DiskFull:
    """A no-space ``OSError`` from anywhere (a mkdir, a link, a rename) as a :class:`DiskFull` naming its path."""
    return exc if isinstance(exc, DiskFull) else DiskFull(Path(exc.filename or "?"), exc)

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
    makes (``mkstemp`` alone would leave it 0600); ``private`` keeps it to the owner (a file with a secret).
    A full disk raises :class:`DiskFull`, the old file left as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        if no_space(exc):
            raise DiskFull(path, exc) from None
        raise
    try:
        os.fchmod(fd, 0o600 if private else 0o666 & ~umask())
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if no_space(exc):
            raise DiskFull(path, exc) from None
        raise


def overwrite_in_place(path: Path, text: str) -> None:
    """Rewrite an existing small file in its own blocks, for when a full disk leaves no room for a new one (the
    run's state must still say how it ended). Not atomic: only for a last word."""
    data = text.encode()
    with open(path, "r+b") as handle:
        handle.write(data)
        handle.truncate(len(data))
        handle.flush()
        os.fsync(handle.fileno())


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


def read_tail(path: Path, limit: int = 4 << 20) -> list[str]:
    """The last ``limit`` bytes of a file as lines (a log can be gigabytes: never more is read); [] when it
    cannot be read."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read(limit).decode("utf-8", "replace").splitlines()
    except OSError:
        return []

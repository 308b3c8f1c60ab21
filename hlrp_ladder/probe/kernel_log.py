"""OOM kills named in the kernel log, to tell whether a host-wide OOM kill hit this probe's tree.

Without a cgroup the only OOM counter is the machine's (``/proc/vmstat``), which counts every process on the
host: another user's job running out of its own memory raises it too. The kernel log names each victim
("Killed process 1234 (python) ..."), so matching those pids against the tree's attributes a kill for
certain. Reading ``/dev/kmsg`` needs root (or ``kernel.dmesg_restrict=0``); where it cannot be read,
:meth:`KernelLog.victims` says so with None and the caller must not guess.
"""
from __future__ import annotations

import errno
import os
import re
from typing import Optional

KILLED = re.compile(r"Killed process (\d+)")


class KernelLog:
    """Opened before the probe starts (positioned at the end), read once it has ended."""

    def __init__(self, path: str = "/dev/kmsg") -> None:
        try:
            self.fd: Optional[int] = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = None

    def killed_pids(self) -> Optional[set[int]]:
        """Pids the kernel OOM-killed since this was opened; None when the log cannot be read."""
        if self.fd is None:
            return None
        found: set[int] = set()
        for _ in range(100_000):
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records were overwritten while we read: skip ahead
                    continue
                return None
            if not record:
                break
            match = KILLED.search(record.decode("utf-8", "replace"))
            if match:
                found.add(int(match.group(1)))
        return found

    def victims(self, tree: set[int]) -> Optional[set[int]]:
        """The pids of ``tree`` the kernel log names as OOM-killed; None when the log cannot be read."""
        killed = self.killed_pids()
        return None if killed is None else killed & tree

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

"""How a probe ended: exit status + kernel OOM counters + the monitor's own action + the log -> an Outcome
with its evidence. Pure: the facts come in as arguments."""
from __future__ import annotations

import re
import signal
from typing import Optional

from hlrp_ladder.records import Evidence, Outcome

CUDA_OOM = re.compile(r"torch\.(cuda\.)?OutOfMemoryError|CUDA out of memory|CUDA error: out of memory|"
                      r"RESOURCE_EXHAUSTED: Out of memory")
MEMORY_HINT = re.compile(r"out of memory|OutOfMemory|MemoryError|Killed|killed by signal|exited unexpectedly|died|"
                         r"can't allocate memory", re.I)
ERROR_HINT = re.compile(r"error|exception|traceback|fatal|abort", re.I)


def shell_exit_code(status: int) -> int:
    """waitstatus_to_exitcode's value as a shell shows it: -9 -> 137."""
    return 128 - status if status < 0 else status


def _signal_name(status: int) -> Optional[str]:
    if status >= 0:
        return None
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"


def _last(lines: list[str], pattern: re.Pattern) -> Optional[str]:
    for line in reversed(lines):
        if pattern.search(line):
            return line.strip()[:300]
    return None


def rank_verdict(outcome: Outcome, ev: Evidence, end, log_tail: list[str]) -> tuple[Outcome, Evidence]:
    """A distributed rung decided by the first rank to end (``end``: a probe.ranks.RankEnd). An OOM-killed rank is
    ``oom_killed``, naming it, whatever the launcher's own exit then was; the others' deaths are consequences. A
    rank that ended first for another reason is ``cuda_oom`` when its log says so, else ``error`` (inconclusive)."""
    ev.rank, ev.world_size = end.rank, end.world
    others = ", ".join(map(str, end.others))
    plural = "s" if len(end.others) > 1 else ""
    of = f"rank {end.rank}" + (f" of {end.world}" if end.world else "")
    if end.oom and end.rank is None:  # a memory verdict all the same; which rank, unknown
        ev.rank_note = f"the ranks ended {'by the runner' if end.by_runner else 'together'}"
        ev.detail = f"the kernel OOM-killed a process of the job; {end.named_by}"
        ev.log_line = ev.log_line or _last([line for line in log_tail if line.strip()][-20:], MEMORY_HINT)
        return Outcome.oom_killed, ev
    if end.oom:
        ev.rank_note = (f"rank{plural} {others} killed by the runner after it" if end.by_runner else
                        f"the launcher ended rank{plural} {others}") if others else ""
        ev.detail = f"the kernel OOM-killed {of} (pid {end.pid}, {end.named_by})" + \
            (f"; {ev.rank_note}" if ev.rank_note else "")
        ev.log_line = ev.log_line or _last([line for line in log_tail if line.strip()][-20:], MEMORY_HINT)
        return Outcome.oom_killed, ev
    cuda = _last([line for line in log_tail if line.strip()][-200:], CUDA_OOM)
    ev.rank_note = (f"rank{plural} {others} ran on for {end.grace_s:g} s, then killed by the runner" if end.by_runner
                    else f"rank{plural} {others} ended after it") if others else ""
    if cuda:
        ev.log_line, ev.detail = cuda, f"the GPU ran out of memory: {of} ended first; {ev.rank_note}"
        return Outcome.cuda_oom, ev
    status = "" if end.exit_code is None else (f", exit {end.exit_code}" if end.exit_code > 0 else
                                               f", killed by signal {-end.exit_code}")
    ev.detail = (f"{of} ended first (pid {end.pid}{status}) with no kernel OOM kill on record; {ev.rank_note}: "
                 f"not a memory verdict")
    ev.log_line = ev.log_line or _last([line for line in log_tail if line.strip()][-30:], ERROR_HINT)
    return Outcome.error, ev


def classify(status: int, stop_reason: Optional[str], oom_before: Optional[int], oom_after: Optional[int],
             oom_counter: str, log_tail: list[str], *, host_wide: bool = False,
             victims: Optional[set[int]] = None, main_pid: Optional[int] = None) -> tuple[Outcome, Evidence]:
    """``status`` is ``os.waitstatus_to_exitcode``'s (negative: killed by that signal); ``stop_reason`` is
    what the monitor did (``rss_breach``, ``gpu_breach``, ``timeout``, ``interrupted``) or None.

    ``host_wide``: the OOM-kill counter is the machine's (``/proc/vmstat``, no cgroup), so it counts every
    process on the host. Then it may only corroborate a SIGKILL of the main process; ``victims`` (the pids of
    this tree that the kernel log names as OOM-killed, None when the log is unreadable) attributes a kill for
    certain. An exit-0 probe stays ``ok`` whatever another user's job did."""
    oom = None if oom_before is None or oom_after is None else oom_after - oom_before
    ev = Evidence(exit_code=shell_exit_code(status), signal=_signal_name(status), oom_kills_before=oom_before,
                  oom_kills_after=oom_after, oom_counter=oom_counter or None)
    nonempty = [line for line in log_tail if line.strip()]
    if stop_reason in ("interrupted", "rss_breach", "gpu_breach", "timeout"):
        ev.detail = {"interrupted": "stopped by the user (Ctrl-C); the tree was killed",
                     "rss_breach": "the monitor killed the tree when it crossed the soft limit",
                     "gpu_breach": "the monitor killed the tree when its GPU memory crossed the GPU limit",
                     "timeout": "the probe ran past timeout_s: SIGTERM, then SIGKILL after the grace"}[stop_reason]
        ev.log_line = _last(nonempty[-5:], MEMORY_HINT) if stop_reason != "interrupted" else None
        return Outcome(stop_reason), ev
    note = ""
    if host_wide:
        main_killed = victims is not None and main_pid in victims
        others = sorted((victims or set()) - {main_pid})
        if status == -signal.SIGKILL and (main_killed or (victims is None and oom)):
            ev.detail = (f"the kernel OOM-killed the main process (pid {main_pid}, named in the kernel log)"
                         if main_killed else
                         f"SIGKILL while the host-wide oom_kill counter rose by {oom}; there is no cgroup and the "
                         f"kernel log is unreadable, so this is corroborated, not proven")
            ev.log_line = _last(nonempty[-20:], MEMORY_HINT)
            return Outcome.oom_killed, ev
        if others:
            ev.log_line = _last(nonempty[-50:], MEMORY_HINT)
            ev.detail = (f"the kernel log names {len(others)} process(es) of the tree as OOM-killed (pid "
                         f"{', '.join(map(str, others))}), not the main one; the main process then exited with "
                         f"{ev.exit_code}")
            return Outcome.child_oom, ev
        if oom:
            note = (f"; the host-wide oom_kill counter rose by {oom} during the probe, but " +
                    ("the kernel log names no process of this tree" if victims is not None else
                     "without a cgroup (and with the kernel log unreadable) it cannot be attributed to this tree"))
    elif status == -signal.SIGKILL and oom:
        ev.detail = "the kernel OOM-killed the main process"
        ev.log_line = _last(nonempty[-20:], MEMORY_HINT)
        return Outcome.oom_killed, ev
    elif oom:
        ev.log_line = _last(nonempty[-50:], MEMORY_HINT)
        ev.detail = (f"the kernel OOM-killed {oom} process(es) of the tree, not the main one; the main "
                     f"process then exited with {ev.exit_code}")
        return Outcome.child_oom, ev
    cuda = _last(nonempty[-200:], CUDA_OOM)
    if status != 0 and cuda:
        ev.log_line, ev.detail = cuda, "the GPU ran out of memory" + note
        return Outcome.cuda_oom, ev
    if status == 0:
        ev.detail = "exited 0" + note
        return Outcome.ok, ev
    ev.log_line = _last(nonempty[-30:], ERROR_HINT) or (nonempty[-1].strip()[:300] if nonempty else None)
    if status == -signal.SIGKILL:
        ev.detail = "killed by SIGKILL from outside, with no kernel OOM kill on record"
    elif status < 0:
        ev.detail = f"killed by {ev.signal}"
    else:
        ev.detail = f"exited with {status}"
    ev.detail += note
    return Outcome.error, ev

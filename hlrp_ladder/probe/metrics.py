"""Reads what the trainer reports — the HLRP_LADDER_METRICS JSON lines, or regexes over its log — *while it
runs*, on the monitor's clock.

Memory at a validation end is what the growth forecast is fitted to, so each event needs a time the monitor can
trust. The files are read after every sample, so an event is *seen* within one sample interval of being written,
and the sample before that read is one certainly taken before it was written. The trainer's own ``"time"`` is
used when it is sane (after the probe started and not after the monitor saw the line), otherwise the time it was
seen. An event first seen after the process exited has no trustworthy time unless the trainer gave one: it gets
no memory reading, rather than a wrong one.
"""
from __future__ import annotations

import bisect
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hlrp_ladder.records import Metrics, MetricsPatterns, ValPoint

TAIL_BYTES = 4 << 20
CLOCK_SLACK_S = 1.0   # a trainer's timestamp may lead the monitor's read by this much (buffered writes, rounding)


def read_tail(path: Path, limit: int = TAIL_BYTES) -> list[str]:
    """The last ``limit`` bytes of a log as lines (a probe log can be large)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def _rate(values: list[float]) -> Optional[float]:
    # The first window includes start-up (imports, buffers filling): leave it out when there are others.
    values = values[1:] if len(values) > 1 else values
    return round(statistics.median(values), 4) if values else None


class _Lines:
    """New complete lines of a growing file, from where the last read stopped."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(TAIL_BYTES)
        except OSError:
            return []
        if not data:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()  # an unfinished last line waits for the rest (or is dropped: a killed probe)
        return [line.decode("utf-8", "replace") for line in lines]


@dataclass
class _Seen:
    payload: dict
    seen_t: Optional[float]   # seconds since the sampler started; None: first seen after the process exited


@dataclass
class LiveMetrics:
    """Follows ``metrics.jsonl`` (and the log, for ``metrics_regex``) during the probe; :meth:`poll` after each
    sample, :meth:`finish` once the process is gone."""
    jsonl: Path
    log: Path
    regex: MetricsPatterns
    start_wall: float                      # wall-clock time of the sampler's t = 0
    check_interval: Optional[int] = None   # steps between validations, to number regex-only validations
    events: list[_Seen] = field(default_factory=list)
    found: dict[str, list[tuple[float, Optional[float]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._jsonl = _Lines(self.jsonl)
        self._patterns = {name: re.compile(getattr(self.regex, name)) for name in ("step_per_s", "samples_per_s",
                                                                                   "val_loss")
                          if getattr(self.regex, name)}
        self._log = _Lines(self.log) if self._patterns else None

    def poll(self, t: Optional[float]) -> None:
        """Read what was written since the last call; ``t`` is now on the sampler's clock (None: after exit)."""
        for line in self._jsonl.read():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                self.events.append(_Seen(event, t))
        if self._log is not None:
            for line in self._log.read():
                for name, pattern in self._patterns.items():
                    match = pattern.search(line)
                    if match:
                        try:
                            value = float(match.group(1) if match.groups() else match.group(0))
                        except ValueError:
                            continue
                        self.found.setdefault(name, []).append((value, t))

    def _when(self, event: dict, seen_t: Optional[float], end_t: float) -> tuple[Optional[float], str]:
        stamp = event.get("time")
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
            t = float(stamp) - self.start_wall
            latest = seen_t if seen_t is not None else end_t
            if -CLOCK_SLACK_S <= t <= latest + CLOCK_SLACK_S:
                return max(0.0, min(t, latest)), "trainer"
        if seen_t is not None:
            return seen_t, "seen"
        return None, "none"

    def finish(self, timeline: list[tuple[float, int, Optional[int], Optional[int]]], end_t: float) -> Metrics:
        """The probe's metrics; ``timeline`` rows are (t, tree rss, cgroup bytes, working set), one per sample;
        ``end_t`` is when the main process was reaped, on the same clock."""
        self.poll(None)
        times = [row[0] for row in timeline]

        def memory(t: Optional[float], source: str) -> tuple[Optional[int], Optional[int], Optional[int]]:
            if t is None:
                return None, None, None
            # A trainer's own time: the latest sample at or before it. A time seen: the poll that saw the line
            # follows the sample taken at t, which may already show what came after it (an exit's teardown, the
            # next step's allocations); the latest sample *before* t is the one certainly taken before the line
            # was written (the previous poll did not see it yet).
            i = (bisect.bisect_right(times, t + 1e-9) if source == "trainer" else bisect.bisect_left(times, t)) - 1
            return timeline[i][1:4] if i >= 0 else (None, None, None)

        if self.events:
            return self._from_events(memory, end_t)
        if not self.found:
            return Metrics()
        points = []
        for k, (value, seen_t) in enumerate(self.found.get("val_loss", []), start=1):
            rss, cg, ws = memory(seen_t, "seen")
            points.append(ValPoint(step=k * (self.check_interval or 1), time=seen_t,
                                   time_source="seen" if seen_t is not None else "none", val_loss=value,
                                   rss_bytes=rss, cgroup_bytes=cg, working_set_bytes=ws))
        return Metrics(source="regex", step_per_s=_rate([v for v, _ in self.found.get("step_per_s", [])]),
                       samples_per_s=_rate([v for v, _ in self.found.get("samples_per_s", [])]),
                       val_loss=points[-1].val_loss if points else None, val_points=points,
                       last_step=points[-1].step if points else None)

    def _from_events(self, memory, end_t: float) -> Metrics:
        events = [s.payload for s in self.events]
        train = [e for e in events if e["event"] == "train"]
        done = [e for e in events if e["event"] == "done"]
        points = []
        for seen in self.events:
            e = seen.payload
            if e["event"] != "val_end":
                continue
            t, source = self._when(e, seen.seen_t, end_t)
            rss, cg, ws = memory(t, source)
            step = e.get("step")
            step = step if isinstance(step, int) else (len(points) + 1) * (self.check_interval or 1)
            points.append(ValPoint(step=step, time=None if t is None else round(t, 3), time_source=source,
                                   val_loss=e.get("val_loss"), rss_bytes=rss, cgroup_bytes=cg,
                                   working_set_bytes=ws))
        steps = [int(e["step"]) for e in events if isinstance(e.get("step"), int)]
        return Metrics(
            source="jsonl", last_step=max(steps) if steps else (points[-1].step if points else None),
            step_per_s=_rate([float(e["step_per_s"]) for e in train if e.get("step_per_s")]),
            samples_per_s=_rate([float(e["samples_per_s"]) for e in train if e.get("samples_per_s")]),
            val_loss=points[-1].val_loss if points else None, val_points=points,
            artifact=done[-1].get("artifact") if done else None)

"""Reads what the trainer reported: the HLRP_LADDER_METRICS JSON lines, or regexes over the log."""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Optional

from hlrp_ladder.records import Metrics, ValPoint
from hlrp_ladder.spec import MetricsRegex

TAIL_BYTES = 4 << 20


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


def _events(path: Path) -> list[dict]:
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if isinstance(event, dict) and "event" in event:
            out.append(event)
    return out


def _at(timeline: list[tuple[float, int, Optional[int]]], t: float) -> tuple[Optional[int], Optional[int]]:
    """Memory of the latest sample taken at or before ``t`` (a later one may already show the exit)."""
    before = [row for row in timeline if row[0] <= t]
    if not before:
        return (timeline[0][1], timeline[0][2]) if timeline else (None, None)
    return before[-1][1], before[-1][2]


def read_metrics(jsonl: Path, log_lines: list[str], regex: MetricsRegex, started_at: float,
                 timeline: list[tuple[float, int, Optional[int]]]) -> Metrics:
    """``timeline`` rows are (seconds since ``started_at``, tree rss, cgroup bytes), to put memory beside each
    val_end: the latest sample at or before the event. ``started_at`` must be the wall-clock time the
    timeline counts from (the sampler's start, not the spawn), or the last validation of a run reads a sample
    taken after it, as the process exits."""
    events = _events(jsonl)
    if events:
        train = [e for e in events if e["event"] == "train"]
        vals = [e for e in events if e["event"] == "val_end"]
        done = [e for e in events if e["event"] == "done"]
        points = []
        for e in vals:
            t = float(e.get("time", started_at)) - started_at
            rss, cg = _at(timeline, t)
            points.append(ValPoint(step=int(e.get("step", 0)), time=round(t, 3), val_loss=e.get("val_loss"),
                                   rss_bytes=rss, cgroup_bytes=cg))
        steps = [int(e["step"]) for e in events if isinstance(e.get("step"), int)]
        return Metrics(
            source="jsonl", last_step=max(steps) if steps else None,
            step_per_s=_rate([float(e["step_per_s"]) for e in train if e.get("step_per_s")]),
            samples_per_s=_rate([float(e["samples_per_s"]) for e in train if e.get("samples_per_s")]),
            val_loss=points[-1].val_loss if points else None, val_points=points,
            artifact=done[-1].get("artifact") if done else None)
    found: dict[str, list[float]] = {}
    for name in ("step_per_s", "samples_per_s", "val_loss"):
        pattern = getattr(regex, name)
        if not pattern:
            continue
        compiled = re.compile(pattern)
        for line in log_lines:
            match = compiled.search(line)
            if match:
                try:
                    found.setdefault(name, []).append(float(match.group(1) if match.groups() else match.group(0)))
                except ValueError:
                    pass
    if not found:
        return Metrics()
    return Metrics(source="regex", step_per_s=_rate(found.get("step_per_s", [])),
                   samples_per_s=_rate(found.get("samples_per_s", [])),
                   val_loss=found["val_loss"][-1] if found.get("val_loss") else None)

"""Reads what the trainer reports — the HLRP_LADDER_METRICS JSON lines, or regexes over its log — *while it
runs*, on the monitor's clock.

Memory at a validation end is what the growth forecast is fitted to, so each event needs a time the monitor can
trust. The files are read after every sample, so an event is *seen* within one sample interval of being written,
and the sample before that read is one certainly taken before it was written. The trainer's own ``"time"`` is
used when it is sane (after the probe started and not after the monitor saw the line), otherwise the time it was
seen. An event first seen after the process exited has no trustworthy time unless the trainer gave one: it gets
no memory reading, rather than a wrong one.

What a trainer writes cannot make the runner grow: each file is read incrementally (new bytes only, at most
``CHUNK_BYTES`` a poll), a line longer than ``MAX_LINE_BYTES`` is skipped (counted, and said in the record), and
at most ``MAX_VALUES`` values of each metric are kept (the latest ones).
"""
from __future__ import annotations

import bisect
import json
import math
import re
import statistics
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hlrp_ladder.records import Metrics, MetricsPatterns, ValPoint

CHUNK_BYTES = 4 << 20       # read from a growing file per poll
MAX_LINE_BYTES = 1 << 20    # a longer line is skipped: no metric is a megabyte long
FINISH_BYTES = 64 << 20     # read at most this much more once the process is gone: the file's end
MAX_VALUES = 10_000         # values kept per metric (rates, validations): the latest ones
REGEX_METRICS = ("step_per_s", "samples_per_s", "step_time_ms", "step_time_s", "val_loss")
TORCH_FIELDS = ("allocated", "reserved", "max_reserved")  # protocol fields gpu_<name>: torch.cuda.memory_<name>()
CLOCK_SLACK_S = 1.0   # a trainer's timestamp may lead the monitor's read by this much (buffered writes, rounding)


def steady_rate(train: list[tuple[int, Optional[float]]], vals: list[tuple[int, Optional[float]]],
                startup: float = 0.1) -> tuple[Optional[float], int, Optional[float]]:
    """Steady-state step/s from the train events' (step, time): over the windows between consecutive train
    events, leaving out the first ``startup`` share of them (at least one: imports, buffers filling, compiling)
    and every window that holds a validation (``vals``: by its time when both have one, else by its step: a
    validation at step S follows the train event of S). Returns (steps / seconds over the windows kept, how many,
    their rates' coefficient of variation — the within-run spread); (None, 0, None) when no window is left."""
    windows: list[tuple[int, float]] = []
    for (s0, t0), (s1, t1) in zip(train, train[1:]):
        if t0 is None or t1 is None or s1 <= s0 or t1 <= t0:
            continue
        if any((t0 < tv <= t1) if tv is not None else (s0 <= sv < s1) for sv, tv in vals):
            continue
        windows.append((s1 - s0, t1 - t0))
    windows = windows[max(1, int(len(windows) * startup)):]
    if not windows:
        return None, 0, None
    rate = sum(ds for ds, _ in windows) / sum(dt for _, dt in windows)
    rates = [ds / dt for ds, dt in windows]
    cv = statistics.stdev(rates) / statistics.fmean(rates) if len(rates) > 1 else None
    # significant figures, not decimals: a slow trainer's 0.05 step/s must not round runs into ties
    return float(f"{rate:.6g}"), len(windows), None if cv is None else round(cv, 4)


def _rate(values: list[float]) -> Optional[float]:
    # The first window includes start-up (imports, buffers filling): leave it out when there are others.
    values = values[1:] if len(values) > 1 else values
    return float(f"{statistics.median(values):.6g}") if values else None   # significant figures, as steady_rate


class _Lines:
    """New complete lines of a growing file, from where the last read stopped. Bounded: at most ``CHUNK_BYTES``
    per read, and a line that grows past ``MAX_LINE_BYTES`` without a newline is dropped (and the rest of it,
    up to its newline, skipped), counted in ``skipped``."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""
        self.skipping = False   # inside a line too long to keep, until its newline
        self.skipped = 0
        self.more = False       # the last read stopped at CHUNK_BYTES: there is more to read
        self.jumped = 0         # bytes given up by jump_to_tail

    def jump_to_tail(self, keep: int) -> None:
        """Read on from ``keep`` bytes before the end when more than that is unread (the line cut there is
        dropped)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size - self.offset > keep:
            self.jumped += size - keep - self.offset
            self.offset, self.partial, self.skipping = size - keep, b"", True

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(CHUNK_BYTES)
        except OSError:
            return []
        self.more = len(data) == CHUNK_BYTES
        if not data:
            return []
        self.offset += len(data)
        lines = data.split(b"\n")
        tail = lines.pop()  # an unfinished last line waits for the rest (or is dropped: a killed probe)
        if lines:
            first = lines[0]
            if self.skipping:
                lines = lines[1:]  # the end of a line too long to keep
                self.skipping = False
            else:
                lines[0] = self.partial + first
            self.partial = b""
        out = []
        for line in lines:
            if len(line) > MAX_LINE_BYTES:
                self.skipped += 1
            else:
                out.append(line.decode("utf-8", "replace"))
        if self.skipping:
            return out
        if lines:
            self.partial = tail
        else:
            self.partial += tail
        if len(self.partial) > MAX_LINE_BYTES:
            self.partial, self.skipping = b"", True
            self.skipped += 1
        return out


@dataclass
class _Seen:
    payload: dict
    seen_t: Optional[float]   # seconds since the sampler started; None: first seen after the process exited


def _bytes(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def regex_patterns(regex: MetricsPatterns) -> dict[str, re.Pattern]:
    """The metrics_regex patterns a spec gives, compiled, by metric name."""
    return {name: re.compile(getattr(regex, name)) for name in REGEX_METRICS if getattr(regex, name)}


def regex_reading(pattern: re.Pattern, line: str) -> Optional[tuple[float, Optional[int]]]:
    """(value, step) a metrics_regex pattern reads in a line: the named group ``value`` (else group 1, else the
    match) and the named group ``step`` when it matched digits; None where the line has no such number."""
    match = pattern.search(line)
    if not match:
        return None
    try:
        value = float(match.group("value") if "value" in pattern.groupindex else
                      match.group(1) if match.groups() else match.group(0))
    except (TypeError, ValueError):
        return None
    printed = match.group("step") if "step" in pattern.groupindex else None
    return value, int(printed) if printed is not None and printed.isdigit() else None


@dataclass
class LiveMetrics:
    """Follows ``metrics.jsonl`` (and the log, for ``metrics_regex``) during the probe; :meth:`poll` after each
    sample, :meth:`finish` once the process is gone."""
    jsonl: Path
    log: Path
    regex: MetricsPatterns
    start_wall: float                      # wall-clock time of the sampler's t = 0
    check_interval: Optional[int] = None   # steps between validations, to number regex-only validations
    batch_size: Optional[int] = None       # samples/s of a regex-only trainer: its step/s x this
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_VALUES))   # val_end and done, latest kept
    rates: dict[str, deque] = field(default_factory=dict)   # train events' step_per_s, samples_per_s
    train_marks: deque = field(default_factory=lambda: deque(maxlen=MAX_VALUES))  # train events' (step, time)
    val_marks: deque = field(default_factory=lambda: deque(maxlen=MAX_VALUES))    # val_end events' (step, time)
    last_step: Optional[int] = None
    found: dict[str, deque] = field(default_factory=dict)    # regex name -> (value, seen t, n-th), latest kept
    counts: dict[str, int] = field(default_factory=dict)     # regex name -> matches so far
    torch: dict[str, int] = field(default_factory=dict)      # torch's GPU figures: name -> the largest reported
    protocol: bool = False                                   # a protocol event was read (it wins over regexes)

    def __post_init__(self) -> None:
        self._jsonl = _Lines(self.jsonl)
        self._patterns = regex_patterns(self.regex)
        self._log = _Lines(self.log) if self._patterns else None

    @property
    def skipped(self) -> int:
        """Lines skipped for their length, in the metrics file and the log."""
        return self._jsonl.skipped + (self._log.skipped if self._log is not None else 0)

    @property
    def unread(self) -> int:
        """Bytes of the metrics file and the log given up after the process ended (they ran too far ahead)."""
        return self._jsonl.jumped + (self._log.jumped if self._log is not None else 0)

    def poll(self, t: Optional[float]) -> None:
        """Read what was written since the last call; ``t`` is now on the sampler's clock (None: after exit)."""
        for line in self._jsonl.read():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                self._event(event, t)
        if self._log is not None:
            for line in self._log.read():
                for name, pattern in self._patterns.items():
                    found = regex_reading(pattern, line)
                    if found is not None:
                        value, step = found
                        if step is not None:
                            self.last_step = step if self.last_step is None else max(self.last_step, step)
                        self.counts[name] = self.counts.get(name, 0) + 1
                        self.found.setdefault(name, deque(maxlen=MAX_VALUES)).append(
                            (value, t, self.counts[name], step))

    def _event(self, event: dict, t: Optional[float]) -> None:
        self.protocol = True
        step = event.get("step")
        stamp = event.get("time")
        stamp = float(stamp) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) else None
        stamp = stamp if stamp is not None and math.isfinite(stamp) else None
        if isinstance(step, int) and not isinstance(step, bool):
            self.last_step = step if self.last_step is None else max(self.last_step, step)
            if event["event"] in ("train", "val_end"):
                (self.train_marks if event["event"] == "train" else self.val_marks).append((step, stamp))
        if event["event"] in ("train", "val_end"):
            for name in TORCH_FIELDS:  # torch's own GPU figures: the largest reported
                value = event.get(f"gpu_{name}")
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    self.torch[name] = max(self.torch.get(name, 0), value)
        if event["event"] == "train":
            for name in ("step_per_s", "samples_per_s"):
                value = event.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
                    self.rates.setdefault(name, deque(maxlen=MAX_VALUES)).append(float(value))
        elif event["event"] in ("val_end", "done"):
            # only what is read later: an event line may be up to a megabyte, and 10,000 of them are kept
            keep = {k: event.get(k) for k in ("event", "step", "val_loss", "time", "gpu_allocated")}
            artifact = event.get("artifact")
            if isinstance(artifact, str):
                keep["artifact"] = artifact[:4096]
            self.events.append(_Seen(keep, t))

    def _drain(self) -> None:
        """After the process is gone: what it wrote last. A file that ran ahead of the reader by more than
        ``FINISH_BYTES`` is read from that far before its end (the end says how the run finished; the middle is
        given up, and counted)."""
        for lines in (self._jsonl, self._log):
            if lines is not None:
                lines.jump_to_tail(FINISH_BYTES)
        for _ in range(FINISH_BYTES // CHUNK_BYTES + 1):
            self.poll(None)
            if not self._jsonl.more and (self._log is None or not self._log.more):
                break

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
        """The probe's metrics; ``timeline`` rows are (t, tree rss, cgroup bytes, working set, GPU bytes on the
        busiest device), one per sample (rows without the GPU column are read as having none);
        ``end_t`` is when the main process was reaped, on the same clock."""
        self._drain()
        times = [row[0] for row in timeline]

        def memory(t: Optional[float], source: str) -> tuple[Optional[int], ...]:
            if t is None:
                return None, None, None, None
            # A trainer's own time: the latest sample at or before it. A time seen: the poll that saw the line
            # follows the sample taken at t, which may already show what came after it (an exit's teardown, the
            # next step's allocations); the latest sample *before* t is the one certainly taken before the line
            # was written (the previous poll did not see it yet).
            i = (bisect.bisect_right(times, t + 1e-9) if source == "trainer" else bisect.bisect_left(times, t)) - 1
            return (tuple(timeline[i][1:5]) + (None,) * 4)[:4] if i >= 0 else (None, None, None, None)

        if self.protocol:  # the trainer speaks the protocol: its events, whatever a regex also found
            return self._from_events(memory, end_t)
        if not self.found:
            return Metrics()
        points = []
        for value, seen_t, k, step in self.found.get("val_loss", []):
            rss, cg, ws, gpu = memory(seen_t, "seen")
            # the step the trainer printed; else the k-th validation at k x check_interval (a trainer that also
            # validates at step 0 needs the printed step: nanoGPT's "step 0: ... val loss")
            points.append(ValPoint(step=step if step is not None else k * (self.check_interval or 1), time=seen_t,
                                   time_source="seen" if seen_t is not None else "none", val_loss=value,
                                   rss_bytes=rss, cgroup_bytes=cg, working_set_bytes=ws, gpu_bytes=gpu))
        values = lambda name: [v for v, *_ in self.found.get(name, [])]  # noqa: E731
        step_per_s = _rate(values("step_per_s")) or _rate([1000 / v for v in values("step_time_ms") if v > 0]) \
            or _rate([1 / v for v in values("step_time_s") if v > 0])
        source = "regex" if step_per_s else ""
        if not step_per_s:  # neither a rate nor a step time: steps printed over the seconds between their lines
            # One mark per read, at the highest step seen by then: lines read together were written at any time
            # before that read (a trainer's block-buffered stdout), so their highest step is the one "at" it.
            reads: dict[float, int] = {}
            for found in self.found.values():
                for _, t, _, s in found:
                    if t is not None and s is not None:
                        reads[t] = max(reads.get(t, s), s)
            marks = sorted(reads.items())
            if len(marks) >= 2 and marks[-1][0] > marks[0][0] and marks[-1][1] > marks[0][1]:
                step_per_s = float(f"{(marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0]):.6g}")
                source = "wall between metric lines"
        samples_per_s = _rate(values("samples_per_s")) or \
            (step_per_s * self.batch_size if step_per_s and self.batch_size else None)
        last = max([s for s in (self.last_step, points[-1].step if points else None) if s is not None], default=None)
        return Metrics(source="regex", step_per_s=step_per_s, samples_per_s=samples_per_s, rate_source=source,
                       val_loss=points[-1].val_loss if points else None, val_points=points,
                       last_step=last, skipped_lines=self.skipped, unread_bytes=self.unread)

    def _from_events(self, memory, end_t: float) -> Metrics:
        done = [s.payload for s in self.events if s.payload["event"] == "done"]
        points = []
        for seen in self.events:
            e = seen.payload
            if e["event"] != "val_end":
                continue
            t, source = self._when(e, seen.seen_t, end_t)
            rss, cg, ws, gpu = memory(t, source)
            step = e.get("step")
            step = step if isinstance(step, int) else (len(points) + 1) * (self.check_interval or 1)
            val_loss = e.get("val_loss")
            points.append(ValPoint(step=step, time=None if t is None else round(t, 3), time_source=source,
                                   val_loss=val_loss if isinstance(val_loss, (int, float)) else None,
                                   rss_bytes=rss, cgroup_bytes=cg, working_set_bytes=ws, gpu_bytes=gpu,
                                   torch_allocated_bytes=_bytes(e.get("gpu_allocated"))))
        artifact = done[-1].get("artifact") if done else None
        steady, windows, cv = steady_rate(list(self.train_marks), list(self.val_marks))
        return Metrics(
            source="jsonl", last_step=self.last_step if self.last_step is not None else
            (points[-1].step if points else None),
            steady_step_per_s=steady, steady_windows=windows, steady_cv=cv,
            step_per_s=_rate(list(self.rates.get("step_per_s", []))),
            samples_per_s=_rate(list(self.rates.get("samples_per_s", []))),
            val_loss=points[-1].val_loss if points else None, val_points=points,
            artifact=artifact if isinstance(artifact, str) else None, skipped_lines=self.skipped,
            unread_bytes=self.unread, **{f"torch_{name}_bytes": value for name, value in self.torch.items()})

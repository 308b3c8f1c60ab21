"""Reading the trainer's metrics live, on the monitor's clock: each validation end gets the memory of the moment
the monitor saw it (or of the trainer's own sane timestamp), never a reading from the wrong time."""
import json

import pytest

from hlrp_ladder.probe.metrics import LiveMetrics
from hlrp_ladder.records import MetricsPatterns

pytestmark = pytest.mark.pure

START = 1000.0                                    # wall clock of the sampler's t = 0
TIMELINE = [(0.5, 100, 90, 80), (1.0, 200, 190, 180), (1.5, 300, 290, 280), (2.0, 400, 390, 380), (2.5, 500, 490, 480)]


def feed(tmp_path, lines_at: dict[float, list[dict]], regex=MetricsPatterns(), log_at=None, interval=10):
    """Write the events the trainer wrote before each poll time, polling as the monitor does."""
    live = LiveMetrics(tmp_path / "m.jsonl", tmp_path / "log.txt", regex, START, interval)
    (tmp_path / "m.jsonl").touch()
    (tmp_path / "log.txt").touch()
    for t, *_ in TIMELINE:
        with open(tmp_path / "m.jsonl", "a") as f:
            for event in lines_at.get(t, []):
                f.write(json.dumps(event) + "\n")
        with open(tmp_path / "log.txt", "a") as f:
            for line in (log_at or {}).get(t, []):
                f.write(line + "\n")
        live.poll(t)
    return live.finish(TIMELINE, end_t=2.6)


def test_events_without_time_take_the_moment_they_were_seen(tmp_path):
    m = feed(tmp_path, {1.0: [{"event": "val_end", "step": 10, "val_loss": 0.5}],
                        2.0: [{"event": "val_end", "step": 20, "val_loss": 0.4}]})
    # the memory of the last sample certainly taken before the line was written (the one before the read that saw
    # it), not every point at t=0 (the old bug), and not the sample of the same tick (it may show what followed)
    assert [(p.step, p.time, p.time_source, p.rss_bytes, p.cgroup_bytes, p.working_set_bytes)
            for p in m.val_points] == [(10, 1.0, "seen", 100, 90, 80), (20, 2.0, "seen", 300, 290, 280)]


def test_a_sane_trainer_time_is_used_and_an_insane_one_is_not(tmp_path):
    m = feed(tmp_path, {2.0: [{"event": "val_end", "step": 10, "time": START + 1.2},     # sane: before it was seen
                              {"event": "val_end", "step": 20, "time": 12345.0}]})     # another clock: ignored
    assert [(p.time, p.time_source, p.rss_bytes) for p in m.val_points] == [(1.2, "trainer", 200),
                                                                             (2.0, "seen", 300)]


def test_an_event_first_seen_after_exit_without_time_gets_no_memory(tmp_path):
    live = LiveMetrics(tmp_path / "m.jsonl", tmp_path / "log.txt", MetricsPatterns(), START, 10)
    (tmp_path / "m.jsonl").write_text(json.dumps({"event": "val_end", "step": 30}) + "\n")
    m = live.finish(TIMELINE, end_t=2.6)  # never polled while running
    assert (m.val_points[0].time_source, m.val_points[0].rss_bytes) == ("none", None)


def test_a_line_cut_by_a_kill_is_ignored(tmp_path):
    live = LiveMetrics(tmp_path / "m.jsonl", tmp_path / "log.txt", MetricsPatterns(), START, 10)
    (tmp_path / "m.jsonl").write_text(json.dumps({"event": "train", "step": 5, "step_per_s": 2.0}) + '\n{"event": "va')
    live.poll(1.0)
    m = live.finish(TIMELINE, end_t=2.6)
    assert m.source == "jsonl" and m.val_points == [] and m.last_step == 5


def test_regex_only_trainer_validations_are_numbered_and_timed(tmp_path):
    regex = MetricsPatterns(step_per_s=r"([\d.]+) it/s", val_loss=r"eval loss ([\d.]+)")
    m = feed(tmp_path, {}, regex, log_at={0.5: ["it 1 2.0 it/s", "it 2 3.0 it/s"], 1.5: ["eval loss 0.25"],
                                          2.5: ["it 3 5.0 it/s", "eval loss 0.20"]}, interval=50)
    assert m.source == "regex" and m.step_per_s == 4.0 and m.val_loss == 0.20
    assert [(p.step, p.time, p.rss_bytes) for p in m.val_points] == [(50, 1.5, 200), (100, 2.5, 400)]


def test_rates_skip_the_first_window(tmp_path):
    events = [{"event": "train", "step": s, "step_per_s": r, "samples_per_s": 8 * r} for s, r in
              ((5, 1.0), (10, 4.0), (15, 6.0))]
    m = feed(tmp_path, {1.0: events})
    assert m.step_per_s == 5.0 and m.samples_per_s == 40.0

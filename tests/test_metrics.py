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


NANOGPT = MetricsPatterns(val_loss=r"step (?P<step>\d+): train loss [0-9.]+, val loss (?P<value>[0-9.]+)",
                          step_time_ms=r"iter (?P<step>\d+): loss [0-9.]+, time (?P<value>[0-9.]+)ms")


def test_a_regex_read_trainer_places_validations_at_the_steps_it_printed(tmp_path):
    # nanoGPT validates at step 0 too: counted as the k-th validation it would sit at 30/60/90
    log = {0.5: ["step 0: train loss 4.2000, val loss 4.2100"],
           1.0: [f"iter {i}: loss 4.1, time 50.00ms" for i in range(0, 30)],
           1.5: ["step 30: train loss 3.2000, val loss 3.3000"],
           2.0: [f"iter {i}: loss 3.1, time 40.00ms" for i in range(30, 60)],
           2.5: ["step 60: train loss 2.2000, val loss 2.3000"]}
    m = feed(tmp_path, {}, regex=NANOGPT, log_at=log, interval=30)
    assert [p.step for p in m.val_points] == [0, 30, 60] and m.last_step == 60
    assert m.val_loss == 2.3 and m.source == "regex"
    # 30 steps at 50 ms, 30 at 40 ms: the median of 1000 / ms, the first (start-up) value left out, as for events
    assert m.step_per_s == pytest.approx(25.0)


def test_step_time_gives_samples_per_second_at_the_probes_batch_size(tmp_path):
    live = LiveMetrics(tmp_path / "m.jsonl", tmp_path / "log.txt", NANOGPT, START, 10, batch_size=12)
    (tmp_path / "log.txt").write_text("".join(f"iter {i}: loss 1.0, time 100.00ms\n" for i in range(5)))
    live.poll(1.0)
    m = live.finish(TIMELINE, end_t=2.6)
    assert m.step_per_s == pytest.approx(10.0) and m.samples_per_s == pytest.approx(120.0) and m.last_step == 4


def test_a_regex_with_other_named_groups_is_a_spec_error():
    from hlrp_ladder.spec.sections import MetricsRegex

    with pytest.raises(ValueError, match="named groups may be 'value' and 'step' only"):
        MetricsRegex(val_loss=r"val (?P<loss>[0-9.]+)")


def test_without_a_rate_the_steps_printed_over_the_seconds_between_their_lines_give_one(tmp_path):
    regex = MetricsPatterns(val_loss=r"step (?P<step>\d+): val loss (?P<value>[0-9.]+)")
    log = {0.5: ["step 0: val loss 4.0"], 1.5: ["step 10: val loss 3.0"], 2.5: ["step 20: val loss 2.0"]}
    m = feed(tmp_path, {}, regex=regex, log_at=log)
    assert m.step_per_s == pytest.approx(10.0) and m.rate_source == "wall between metric lines"


def test_lines_read_together_are_placed_at_the_read_with_their_highest_step(tmp_path):
    # a block-buffered trainer: steps 0-90 reach the log by t=1.0, steps 100-190 by t=2.0 (10 step/s, not 19)
    regex = MetricsPatterns(val_loss=r"step (?P<step>\d+): val loss (?P<value>[0-9.]+)")
    log = {1.0: [f"step {s}: val loss 1.0" for s in range(0, 100, 10)],
           2.0: [f"step {s}: val loss 1.0" for s in range(100, 200, 10)]}
    m = feed(tmp_path, {}, regex=regex, log_at=log)
    assert m.step_per_s == pytest.approx(100.0)   # (190 - 90) steps over the 1 s between the two reads


def test_a_step_group_that_did_not_match_keeps_the_value_and_slow_rates_keep_their_digits(tmp_path):
    regex = MetricsPatterns(val_loss=r"(?:step (?P<step>\d+): )?val loss (?P<value>[0-9.]+)",
                            step_time_s=r"took (?P<value>[0-9.]+) s")
    m = feed(tmp_path, {}, regex=regex, log_at={1.0: ["val loss 3.5", "took 30000 s", "took 30000 s"]})
    assert m.val_loss == 3.5                                   # no step printed: the k-th validation's place
    assert m.step_per_s == pytest.approx(1 / 30000, rel=1e-4)  # 3.3e-05 step/s, not rounded to 0


def test_a_step_group_without_a_value_group_is_a_spec_error():
    from hlrp_ladder.spec.sections import MetricsRegex

    with pytest.raises(ValueError, match="names its number"):
        MetricsRegex(val_loss=r"step (?P<step>\d+): val loss ([0-9.]+)")

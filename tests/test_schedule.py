"""Parallel slots never change the pick: pure, a simulated clock, many synthetic memory curves."""
import random

import pytest

from hlrp_ladder import search as policy
from hlrp_ladder.records import Outcome
from hlrp_ladder.search.schedule import schedule
from tests.handmade import rec

pytestmark = pytest.mark.pure

GRID = list(range(8, 65, 4))
DURATION = {"stress": 6.0}


def sequential(plan, one_val_ok, stress_ok, make=rec, failure="oom_killed"):
    records = []
    while (rung := policy.next_rung(plan, records)) is not None:
        ok = stress_ok(rung.batch_size) if rung.phase == "stress" else one_val_ok(rung.batch_size)
        records.append(make(rung.batch_size, "ok" if ok else failure, phase=rung.phase, repeat=rung.repeat,
                            retry=rung.retry, t=len(records) + 1.0))
    return policy.verdict(plan, records).pick, len(records)


class Memo:
    """``schedule`` for one plan, each distinct state asked once. The sweeps below replay hundreds of runs whose
    early states are the same (a run is the same until its curve first differs), and ``schedule`` is pure: a
    function of the records, the running probes and the slot count. That purity is checked too: every 100th
    repeat of a state is asked again and must get the same answer."""

    def __init__(self, plan):
        self.plan, self.seen, self.repeats = plan, {}, 0

    def __call__(self, records, running, slots):
        key = (tuple((r.batch_size, r.outcome, r.phase, r.repeat, r.retry, r.started_at) for r in records),
               tuple(running), slots)
        if key not in self.seen:
            self.seen[key] = schedule(self.plan, records, running, slots)
        else:
            self.repeats += 1
            if self.repeats % 100 == 0:
                assert schedule(self.plan, records, running, slots) == self.seen[key], key
        return self.seen[key]


def parallel(plan, one_val_ok, stress_ok, slots, memo=None, make=rec, failure="oom_killed"):
    """A discrete-event run: probes take 1 (one-val) or 6 (stress) time units; decisions at every finish."""
    ask = memo or (lambda records, running, slots: schedule(plan, records, running, slots))
    assert memo is None or memo.plan is plan
    records, running, clock = [], {}, 0.0
    while True:
        sch = ask(records, [r for r, _ in running.values()], slots)
        for rung in sch.cancel:
            del running[policy.rung_key(rung)]
            records.append(rec(rung.batch_size, "cancelled", phase=rung.phase, repeat=rung.repeat,
                               retry=rung.retry, t=clock + 1e-6))
        for rung in sch.start:
            assert policy.rung_key(rung) not in running
            running[policy.rung_key(rung)] = (rung, clock + DURATION.get(rung.phase, 1.0))
        assert len(running) <= slots
        if not running:
            return policy.verdict(plan, records), clock, sum(r.outcome != Outcome.cancelled for r in records)
        key, (rung, end) = min(running.items(), key=lambda item: item[1][1])
        clock = end
        del running[key]
        ok = stress_ok(rung.batch_size) if rung.phase == "stress" else one_val_ok(rung.batch_size)
        records.append(make(rung.batch_size, "ok" if ok else failure, phase=rung.phase, repeat=rung.repeat,
                            retry=rung.retry, t=clock))


def curves():
    """(name, one-val ok?, stress ok?) over the grid: monotonic, noisy (non-monotonic), a step, a plateau."""
    out = []
    for f in (12, 28, 44, 68):
        for s in (12, 24, 40, 68):
            out.append((f"linear F={f} S={s}", lambda b, f=f: b < f, lambda b, f=f, s=s: b < min(f, s)))
    for seed in range(6):
        rnd = random.Random(seed)
        noisy = {b: b < 40 and rnd.random() > 0.15 for b in GRID}          # a rung below the limit may fail
        noisy_s = {b: noisy[b] and (b < 32 or rnd.random() > 0.5) for b in GRID}
        out.append((f"noisy seed={seed}", noisy.__getitem__, noisy_s.__getitem__))
    out.append(("step at 36", lambda b: b < 36, lambda b: b < 36))
    out.append(("plateau: all pass", lambda b: True, lambda b: True))
    out.append(("first fails", lambda b: False, lambda b: False))
    return out


@pytest.mark.parametrize("refine", ["none", "bisect", "model"])
@pytest.mark.parametrize("stress", [False, True])
def test_every_slot_count_picks_what_the_sequential_ladder_picks(refine, stress):
    plan = policy.Plan(batch_sizes=GRID, refine=refine, stress=stress, repeats=1, limit_bytes=2 << 30)
    memo = Memo(plan)
    for name, one_val_ok, stress_ok in curves():
        expected, _ = sequential(plan, one_val_ok, stress_ok)
        for slots in range(1, 9):
            got, _, _ = parallel(plan, one_val_ok, stress_ok, slots, memo)
            assert got.pick == expected, (name, slots, got.reason)


def gpu_bound(per_sample_gib):
    """Records of a GPU-bound trainer: host memory flat, GPU memory 1.3 GiB + per_sample_gib x bs on a 139.8 GiB
    device (limit 125.8 GiB), the failures cuda_oom — the shape measured with GPT-2 on the H200."""
    def make(bs, outcome, **kw):
        return rec(bs, outcome, peak_gib=1.4, cap_gib=None, gpu_gib=min(139.8, 1.3 + per_sample_gib * bs),
                   gpu_limit_gib=125.8, gpu_total_gib=139.8, **kw)
    return make


@pytest.mark.parametrize("refine", ["none", "bisect", "model"])
@pytest.mark.parametrize("stress", [False, True])
def test_gpu_bound_curves_pick_the_same_with_any_slot_count(refine, stress):
    """The parallel pick is the sequential one when the GPU binds (one GPU per slot: each probe its own device)."""
    plan = policy.Plan(batch_sizes=GRID, refine=refine, stress=stress, repeats=1, limit_bytes=20 << 30)
    for per_sample in (1.85, 2.6, 3.9):
        make = gpu_bound(per_sample)
        fits = lambda b, p=per_sample: 1.3 + p * b <= 139.8  # noqa: E731
        for name, stress_ok in (("stress as one-val", fits), ("stress fails above 40", lambda b, f=fits: f(b) and b <= 40)):
            expected, _ = sequential(plan, fits, stress_ok, make, "cuda_oom")
            for slots in range(1, 5):
                got, _, _ = parallel(plan, fits, stress_ok, slots, make=make, failure="cuda_oom")
                assert got.pick == expected, (per_sample, name, slots, got.reason)


def test_repeats_and_slots():
    plan = policy.Plan(batch_sizes=GRID, stress=True, repeats=2)
    memo = Memo(plan)
    for name, one_val_ok, stress_ok in curves():
        expected, _ = sequential(plan, one_val_ok, stress_ok)
        for slots in (2, 3, 5):
            assert parallel(plan, one_val_ok, stress_ok, slots, memo)[0].pick == expected, (name, slots)


def test_one_slot_is_the_sequential_ladder():
    plan = policy.Plan(batch_sizes=GRID, stress=True)
    _, clock, probes = parallel(plan, lambda b: b < 44, lambda b: b < 36, 1)
    assert probes == sequential(plan, lambda b: b < 44, lambda b: b < 36)[1] == 13


def test_two_slots_overlap_the_stress_phase_and_the_wall_time_drops():
    # the demo's shape: 6 rungs, bs=32 fails one-val, bs=24 fails stress: sequentially 6 one-val + 2 stress
    plan = policy.Plan(batch_sizes=[8, 12, 16, 20, 24, 32], stress=True)
    one_val_ok, stress_ok = (lambda b: b < 32), (lambda b: b < 24)
    walls = [parallel(plan, one_val_ok, stress_ok, slots)[1] for slots in (1, 2, 4)]
    assert walls[0] == 6 * 1 + 2 * 6
    # the one-val ladder goes on while the stress probe of the candidate runs: close to one stress probe more
    # than the one-val ladder, and with 4 slots close to the floor of one one-val plus one stress probe and a bit
    assert walls[1] <= 10 and walls[2] <= 9, walls


def test_a_failure_cancels_the_speculative_rungs_above_it_and_a_pass_above_it_is_not_used():
    plan = policy.Plan(batch_sizes=[8, 12, 16, 20, 24], stress=False)
    records = [rec(8, t=1), rec(12, t=2)]
    running = [policy.Rung(16), policy.Rung(20), policy.Rung(24)]
    records.append(rec(16, "oom_killed", t=3))
    sch = schedule(plan, records, running[1:], 3)
    assert sch.cancel == [policy.Rung(20), policy.Rung(24)] and sch.start == []
    # a rung above the failure that had already passed is reported, never picked
    v = policy.verdict(plan, records + [rec(20, t=2.5)])
    assert v.pick == 12
    assert v.reason.endswith("Not used: bs=20 passed one-val above the failure at bs=16 (a non-monotonic "
                             "result: noise, or memory that is not monotonic in the batch size).")

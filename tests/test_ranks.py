"""A rung that is a distributed job: ranks found by their environment, each rank's memory, the first rank to die
decides at once. Real torchrun with torch's gloo backend on the CPU, and a script that spawns its own ranks with
no agent (a survivor of a dead rank blocks in its collective); rank 0 holds 40 MiB more per sample."""
import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

from hlrp_ladder.probe.outcome import rank_verdict
from hlrp_ladder.probe.ranks import RankEnd, rank_of
from hlrp_ladder.probe.runner import run_probe
from hlrp_ladder.records import Evidence, Outcome, ProbeRequest
from hlrp_ladder.search.words import probe_clause
from hlrp_ladder.spec.argv import launch
from tests.helpers import alive_with, cli

HOG = str(Path(__file__).parent / "fixtures" / "ddp_hog.py")
MIB = 2**20


def probe(tmp_path, argv, *, cap_mib=None, name="p", grace=30.0, per_rank=False, rss_limit=20 << 30, marker=""):
    req = ProbeRequest(folder=tmp_path / name, batch_size=1, phase="ladder", argv=argv, cwd=str(tmp_path),
                       rss_limit_bytes=rss_limit, cap_bytes=None if cap_mib is None else cap_mib * MIB,
                       cgroup="auto" if cap_mib else "none", cgroup_name=f"pytest-{os.getpid()}-{name}-{time.monotonic_ns()}",
                       timeout_s=120, ranks=2, rank_grace_s=grace, per_rank=per_rank, probe_id=marker)
    return run_probe(req)


def spawned(bs, *extra):
    steps = [] if any(e.startswith("steps=") for e in extra) else ["steps=60"]
    return [sys.executable, HOG, "spawn=2", f"batch_size={bs}", *steps, "step_s=0.1", "gloo_timeout_s=300", *extra]


# ---- pure -----------------------------------------------------------------------------------------------------
@pytest.mark.pure
@pytest.mark.parametrize("env, expected", [
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (1, 4)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, (0, 2)),
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8"}, (3, 8)),
    ({"RANK": "x"}, None),
    ({"PATH": "/bin"}, None),
])
def test_a_rank_is_read_from_its_environment(env, expected):
    assert rank_of(env) == expected


@pytest.mark.pure
def test_a_launcher_wraps_the_command():
    assert launch(["python3", "train.py", "a=1"], "torchrun", 2)[:5] == \
        ["python3", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert launch(["python3", "-m", "trainer.train"], "torchrun", 4)[-2:] == ["-m", "trainer.train"]
    assert launch(["./train"], "torchrun", 2)[0] == "torchrun"
    assert launch(["python3", "t.py"], "srun", 2, 1) == ["srun", "--ntasks=2", "--gpus-per-task=1", "python3", "t.py"]
    assert launch(["python3", "t.py"], "spawn", 2) == ["python3", "t.py"]


def ranks_of(*specs):
    """Ranks as the runner would hold them: (rank, ended_at or None, oom_in_interval, exit_code) each."""
    from hlrp_ladder.probe.ranks import Rank, Ranks
    from hlrp_ladder.records import RankPeak

    ranks = Ranks(expected=len(specs), own={})
    for rank, ended_at, oom, code in specs:
        ranks.ranks[rank] = Rank(rank, RankPeak(pid=100 + rank, last_rss_bytes=1 << 30), {100 + rank: 1.0},
                                 ended_at, oom, code)
    ranks.world = len(specs)
    return ranks


@pytest.mark.pure
def test_which_rank_the_kernel_killed_is_said_only_when_it_is_known():
    decide = dict(failures={}, grace_s=0.0, agent=False)
    # the kernel log names rank 1's process: certain, whatever ended first
    end = ranks_of((0, 5.0, False, None), (1, None, False, None)).decide(killed={101}, oom_rose=True, **decide)
    assert end.rank == 1 and end.oom and end.named_by == "named in the kernel log"
    # no kernel log: the only rank that ended in the interval where the counter rose
    end = ranks_of((0, 5.0, True, None), (1, None, False, None)).decide(killed=None, oom_rose=True, **decide)
    assert end.rank == 0 and end.named_by.startswith("the only rank")
    # two ended in one sample: a memory verdict, but no rank named
    end = ranks_of((0, 5.0, True, None), (1, 5.0, True, None), (2, None, False, None)).decide(
        killed=None, oom_rose=True, **decide)
    assert end.oom and end.rank is None and "2 ranks ended in the same sample" in end.named_by
    # the counter rose long before this rank ended (say, a worker earlier): not this rank's kill
    end = ranks_of((0, 5.0, False, 0), (1, None, False, None)).decide(killed=None, oom_rose=True, **decide)
    assert end is None


@pytest.mark.pure
def test_an_end_that_is_no_oom_kill_decides_only_with_its_failure_on_record():
    grace = dict(killed=None, oom_rose=False, failures={}, grace_s=0.0)
    assert ranks_of((1, 5.0, False, 0), (0, None, False, None)).decide(agent=False, **grace) is None  # exited 0
    assert ranks_of((1, 5.0, False, None), (0, None, False, None)).decide(agent=False, **grace) is None  # unknown
    end = ranks_of((1, 5.0, False, 1), (0, None, False, None)).decide(agent=False, **grace)
    assert end.rank == 1 and not end.oom and end.exit_code == 1
    assert ranks_of((1, 5.0, False, 1), (0, None, False, None)).decide(agent=True, **grace) is None  # torchrun's
    srun = ranks_of((1, 5.0, False, None), (0, None, False, None)).decide(
        killed=None, oom_rose=False, failures={1: 2}, grace_s=0.0, agent=False)
    assert srun.rank == 1 and srun.exit_code == 2


@pytest.mark.pure
def test_the_first_rank_to_die_is_the_verdict_and_the_others_are_consequences():
    end = RankEnd(rank=0, world=2, pid=41, oom=True, named_by="named in the kernel log", rss_bytes=11 << 30,
                  others=[1])
    outcome, ev = rank_verdict(Outcome.error, Evidence(exit_code=137), end, ["Killed"])
    assert outcome == Outcome.oom_killed and (ev.rank, ev.world_size) == (0, 2)
    assert ev.detail == ("the kernel OOM-killed rank 0 of 2 (pid 41, named in the kernel log); rank 1 killed by the "
                         "runner after it")
    not_memory = RankEnd(rank=1, world=2, pid=42, oom=False, named_by="the first to end", rss_bytes=1, others=[0],
                         grace_s=30)
    outcome, ev = rank_verdict(Outcome.error, Evidence(exit_code=137), not_memory, ["ValueError: a bad batch"])
    assert outcome == Outcome.error and "rank 1 of 2 ended first" in ev.detail and "not a memory verdict" in ev.detail
    outcome, ev = rank_verdict(Outcome.error, Evidence(exit_code=137), not_memory,
                               ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"])
    assert outcome == Outcome.cuda_oom and ev.rank == 1


# ---- real ranks -----------------------------------------------------------------------------------------------
@pytest.mark.process
def test_without_an_agent_the_oom_killed_rank_ends_the_rung_at_once(tmp_path, need_cgroup, marker):
    # rank 1 is the one that holds more here: the rank is named from the kill, not from its number or pid order
    start = time.monotonic()
    rec = probe(tmp_path, spawned(16, "hog_rank=1", "survivors=hang", marker), cap_mib=1000, marker=marker)
    took = time.monotonic() - start
    assert rec.outcome == Outcome.oom_killed, rec.evidence
    assert rec.evidence.rank == 1 and rec.evidence.world_size == 2
    assert probe_clause(rec).startswith("bs=1 oom_killed (rank 1 of 2, ") and \
        probe_clause(rec).endswith("under a 1000 MiB cap; rank 0 killed by the runner after it)")
    # rank 0 waits in the collective (survivors=hang) for the 120 s probe timeout; the runner killed it at once
    assert took < 30, took
    assert set(rec.peaks.ranks) == {"0", "1"} and rec.peaks.ranks["1"].rss_bytes > rec.peaks.ranks["0"].rss_bytes
    assert not alive_with(marker)
    assert (tmp_path / "p" / "ranks.csv").read_text().startswith("t,rank,rss,gpu\n")


@pytest.mark.process
def test_ranks_that_finish_apart_are_a_clean_run(tmp_path, marker):
    # rank 1 exits 0 while rank 0 saves for 4 s more: longer than the grace, and no failure on record
    rec = probe(tmp_path, spawned(2, "steps=10", "linger_rank=0", "linger_s=4", marker), grace=1.0, marker=marker)
    assert rec.outcome == Outcome.ok, rec.evidence
    assert rec.evidence.rank is None and rec.duration_s > 4


@pytest.mark.process
def test_a_rank_that_fails_for_another_reason_is_an_error_naming_it(tmp_path, marker):
    # The failure is on record while the failed rank is a zombie (its launcher waits for rank 0 first): rank 0
    # takes a second to go here, so the sampler sees it. Where both go within one sample, no rank is named (the
    # pure tests of Ranks.decide cover that), and CI once saw exactly that when rank 0 went at once.
    rec = probe(tmp_path, spawned(2, "fail_rank=1", "fail_at=5", "survivor_exit_s=1", marker), marker=marker)
    assert rec.outcome == Outcome.error and rec.evidence.rank == 1, rec.evidence
    assert "rank 1 of 2 ended first (pid " in rec.evidence.detail and ", exit 1)" in rec.evidence.detail
    assert "rank 0 ended after it" in rec.evidence.detail


@pytest.mark.process
def test_a_survivor_that_waits_in_its_collective_is_killed_after_the_grace_not_at_the_timeout(tmp_path, marker):
    start = time.monotonic()
    rec = probe(tmp_path, spawned(2, "fail_rank=1", "fail_at=5", "survivors=hang", marker), grace=2.0, marker=marker)
    assert rec.outcome == Outcome.error and rec.evidence.rank == 1
    assert "rank 1 of 2 ended first" in rec.evidence.detail and "rank 0 ran on for 2 s" in rec.evidence.detail
    assert "ValueError: a bad batch" in probe_clause(rec)
    assert time.monotonic() - start < 60      # the probe's timeout is 120 s, the survivor would sleep an hour
    assert not alive_with(marker)


@pytest.mark.process
def test_per_rank_the_soft_limit_holds_each_rank_not_their_sum(tmp_path, marker):
    # bs=2: rank 0 ~ 274 + 80 MiB, rank 1 ~ 274 MiB: together over 500 MiB, each under it
    ok = probe(tmp_path, spawned(2, marker), per_rank=True, rss_limit=500 * MIB, marker=marker, name="ok")
    assert ok.outcome == Outcome.ok, ok.evidence
    assert ok.peaks.sampled_rss_bytes > 500 * MIB and max(r.rss_bytes for r in ok.peaks.ranks.values()) < 500 * MIB
    # bs=8: rank 1 (the hog here) ~ 274 + 320 MiB crosses it
    rec = probe(tmp_path, spawned(8, "hog_rank=1", marker), per_rank=True, rss_limit=500 * MIB, marker=marker,
                name="breach")
    assert rec.outcome == Outcome.rss_breach and rec.evidence.rank == 1
    assert "of rank 1 of 2 over the 500 MiB per-rank soft limit" in probe_clause(rec)


@pytest.mark.process
def test_a_torchrun_ladder_stops_at_the_right_rung_and_names_the_rank(tmp_path, need_cgroup):
    spec = tmp_path / "ddp.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "ddp", "command": [sys.executable, HOG, "steps=40", "step_s=0.05"], "batch_size_key": "batch_size",
        "batch_sizes": [2, 4, 8, 16], "launcher": {"kind": "torchrun", "nproc_per_node": 2},
        "probe": {"max_steps": 20, "check_interval": 10, "limit_batches": 1,
                  "keys": {"max_steps": None, "check_interval": "check_interval", "limit_batches": None}},
        "memory": {"cap": "1100MiB"}, "warmup": False, "runs_dir": str(tmp_path / "runs")}))
    res = cli("run", str(spec), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    said = res.stdout + res.stderr
    assert "pick: bs=8" in said
    # the runner kills rank 1 at once, or torchrun's agent beats it to it: either way rank 0 is named
    assert "bs=16 oom_killed (rank 0 of 2, " in said
    assert "rank 1 killed by the runner after it" in said or "the launcher ended rank 1" in said
    rep = cli("report", "--spec", str(spec), "--out", str(tmp_path / "reports"), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    text = next((tmp_path / "reports").glob("ddp-*.md")).read_text()
    assert "## Ranks" in text and "imbalance" in text


@pytest.mark.pure
def test_a_value_inherited_from_the_runners_own_step_is_no_rank():
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "7"}     # the runner, in the batch step
    assert rank_of(dict(batch), batch) is None                                  # the srun client it starts
    assert rank_of({**batch, "SLURM_STEP_ID": "0"}, batch) == (0, 2)            # task 0 of step 0
    assert rank_of({**batch, "SLURM_PROCID": "1", "SLURM_STEP_ID": "0"}, batch) == (1, 2)
    assert rank_of({**batch, "RANK": "0", "WORLD_SIZE": "4"}, batch) == (0, 4)  # torchrun inside the batch step
    assert rank_of({"RANK": "0", "WORLD_SIZE": "2"}, {"RANK": "0"}) == (0, 2)   # a runner's own RANK is no filter
    assert rank_of({"LOCAL_RANK": "1"}) == (1, None)                            # Lightning's children


@pytest.mark.slurm
@pytest.mark.process
def test_an_srun_rung_inside_its_job_names_the_rank_the_kernel_killed(slurm, tmp_path, need_cgroup):
    """The ranks are the job's srun tasks (sbatch --ntasks 2), in a step beside the runner's: found in the job's
    cgroup by the probe's marker, their OOM kill counted in their own step's cgroup. Submitted by root here: the
    ranks need torch (the repository's venv); nobody's venv is the light orchestrator alone."""
    spec = tmp_path / "srun.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "srun", "command": [sys.executable, HOG, "steps=40", "step_s=0.05"], "batch_size_key": "batch_size",
        "batch_sizes": [4, 24], "launcher": {"kind": "srun", "nproc_per_node": 2},
        "probe": {"max_steps": 20, "check_interval": 10, "limit_batches": 1,
                  "keys": {"max_steps": None, "check_interval": "check_interval", "limit_batches": None}},
        "memory": {"cap": "1100MiB", "sample_interval_s": 0.05}, "warmup": False, "timeout_s": 120,
        "executor": {"kind": "slurm", "slurm": {"cpus_per_task": 1}}, "runs_dir": str(tmp_path / "runs")}))
    res = cli("run", str(spec), cwd=tmp_path, timeout=400)
    said = res.stdout + res.stderr
    assert res.returncode == 0, said[-3000:]
    assert "pick: bs=4" in said
    run = next((tmp_path / "runs" / "srun").iterdir())
    ok = json.loads((run / "bs-0004" / "result.json").read_text())
    assert set(ok["peaks"]["ranks"]) == {"0", "1"} and ok["peaks"]["world_size"] == 2
    oom = json.loads((run / "bs-0024" / "result.json").read_text())
    assert oom["outcome"] == "oom_killed" and oom["evidence"]["rank"] == 0, oom["evidence"]
    assert "bs=24 oom_killed (rank 0 of 2, " in said
    assert not slurm.queue()

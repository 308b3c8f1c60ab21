"""What a probe leaves behind: its outcome, the evidence for it, its memory peaks and its metrics.

These models are the contract between the rooms: the executor writes them, the policy reads them, the
report renders them. ``result.json`` in a probe folder is one :class:`ProbeRecord`.
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


METRICS_ENV = "HLRP_LADDER_METRICS"   # where a trainer appends its metrics (the protocol in the README)
MARKER_ENV = "HLRP_LADDER_PROBE"      # carried by every process of a probe's tree: what resume may kill


class Phase(str, Enum):
    """What a probe is for. The search phases (``ladder``, ``refine``) decide where the limit lies; ``repeat`` and
    ``stress`` confirm a candidate; ``warmup`` fills the page cache and is not counted; ``compare`` is a run of a
    variant matrix; ``overnight`` is the long run."""
    ladder = "ladder"
    refine = "refine"
    repeat = "repeat"
    stress = "stress"
    warmup = "warmup"
    compare = "compare"
    overnight = "overnight"

    def __str__(self) -> str:  # "stress", not "Phase.stress", in every sentence and folder name
        return self.value

    __format__ = str.__format__


SEARCH_PHASES = (Phase.ladder, Phase.refine)


class Outcome(str, Enum):
    ok = "ok"
    oom_killed = "oom_killed"      # the kernel OOM-killed the main process
    child_oom = "child_oom"        # the kernel OOM-killed a worker; the main process exited on its own
    rss_breach = "rss_breach"      # the monitor killed the tree: the soft limit was crossed
    gpu_breach = "gpu_breach"      # the monitor killed the tree: a GPU's soft limit (memory.gpu.limit) was crossed
    cuda_oom = "cuda_oom"          # torch.OutOfMemoryError / "CUDA out of memory" in the log
    timeout = "timeout"
    error = "error"                # any other non-zero exit
    interrupted = "interrupted"    # the user pressed Ctrl-C (not a verdict on the batch size)
    forecast_oom = "forecast_oom"  # survived, but its memory growth will not fit by the end of the long run
    cancelled = "cancelled"        # a speculative probe the ladder no longer needed (not a verdict)

    @property
    def is_memory_verdict(self) -> bool:
        """A failure that says the batch size does not fit: the ladder may act on it."""
        return self in MEMORY_VERDICTS

    @property
    def is_inconclusive(self) -> bool:
        """A failure that says nothing about memory (a crash, a hang): retried, never a memory verdict."""
        return self in INCONCLUSIVE


MEMORY_VERDICTS = frozenset({Outcome.oom_killed, Outcome.child_oom, Outcome.rss_breach, Outcome.gpu_breach,
                             Outcome.cuda_oom, Outcome.forecast_oom})
INCONCLUSIVE = frozenset({Outcome.error, Outcome.timeout})


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Evidence(_Model):
    exit_code: Optional[int] = None          # as a shell shows it: 137 for SIGKILL
    signal: Optional[str] = None             # the signal that ended the main process, if one did
    oom_kills_before: Optional[int] = None
    oom_kills_after: Optional[int] = None
    oom_counter: Optional[str] = None        # where the OOM-kill count was read
    log_line: Optional[str] = None           # the line of the log that shows what happened
    detail: str = ""                         # one sentence a person can read
    scheduler: Optional[str] = None          # what the executor saw: "SLURM job 17: OUT_OF_MEMORY, ExitCode 0:125"
    rank: Optional[int] = None               # a distributed rung: the rank whose end decided the outcome
    world_size: Optional[int] = None
    rank_note: str = ""                      # what became of the others: "rank 1 killed by the runner after it"


class RankPeak(BaseModel):
    """One rank of a distributed rung: its processes (those carrying its RANK) and their peaks."""
    model_config = ConfigDict(extra="ignore")
    pid: int                                 # the rank's first process
    rss_bytes: int = 0                       # max over samples of its processes' summed RSS
    gpu_bytes: Optional[int] = None          # max over samples of their GPU memory (NVML), where there is a GPU
    last_rss_bytes: int = 0                  # its RSS in the last sample it was alive for


class Peaks(_Model):
    kernel_bytes: Optional[int] = None       # the kernel's own high-water mark (exact, not sampled)
    kernel_source: str = ""                  # e.g. "cgroup v1 memory.max_usage_in_bytes"
    vmhwm_bytes: Optional[int] = None        # kernel RSS high-water mark of the largest process (wait4)
    sampled_rss_bytes: int = 0               # max over samples of the tree's summed RSS
    sampled_pss_bytes: Optional[int] = None  # max over samples of the tree's summed PSS (metric: pss)
    cgroup_sampled_bytes: Optional[int] = None
    working_set_sampled_bytes: Optional[int] = None  # max over samples of cgroup usage less inactive file cache
    gpu_sampled_bytes: Optional[int] = None  # max over samples of the tree's GPU memory on its busiest device
    gpu_devices: dict[str, int] = {}         # that peak per device (NVML index -> bytes)
    gpu_source: str = ""                     # how GPU memory was read: "nvml per process" | "nvml device used ..."
    max_procs: int = 0
    samples: int = 0
    ranks: dict[str, RankPeak] = {}          # a distributed rung: each rank's peaks (rank -> peaks)
    world_size: Optional[int] = None

    @property
    def imbalance(self) -> Optional[float]:
        """The worst rank's RSS peak over the mean of the ranks' (1.0: even)."""
        values = [r.rss_bytes for r in self.ranks.values()]
        return max(values) / (sum(values) / len(values)) if len(values) > 1 and sum(values) else None


class Limits(_Model):
    metric: str = "rss"
    rss_limit_bytes: int = 0                 # soft limit on the sampled metric
    cap_bytes: Optional[int] = None          # hard limit on cgroup-charged memory
    cgroup: Optional[str] = None             # "v1 /sys/fs/cgroup/memory/..." when one was used
    cgroup_note: str = ""                    # why there was none, when there was none
    gpu_limit_bytes: Optional[int] = None    # the GPU soft limit per device (memory.gpu.limit, resolved on the node
                                             # against the device's memory, or the emulated cap); None: no GPU
    gpu_total_bytes: Optional[int] = None    # the smallest visible device's memory (the emulated cap, when set)
    gpu_devices: list[str] = []              # the devices the probe saw: "0: NVIDIA H200, 139.8 GiB"
    gpu_cap_bytes: Optional[int] = None      # memory.gpu.cap: an emulated smaller GPU
    gpu_cap_mechanism: str = ""              # "mps" (driver-enforced) | "torch" (PyTorch's allocator) | ""
    gpu_cap_covers: str = ""                 # what that mechanism limits, and what it does not
    gpu_note: str = ""                       # why GPU memory was not judged, when it was not
    per_rank: bool = False                   # rss_limit_bytes held each rank (memory.per_rank): peaks.ranks judged

    @property
    def gpu_fit_bytes(self) -> Optional[int]:
        """What a GPU peak must fit under: the soft limit, within the (emulated) device's memory."""
        if self.gpu_limit_bytes is None:
            return None
        return min(self.gpu_limit_bytes, self.gpu_total_bytes or self.gpu_limit_bytes)


class ValPoint(_Model):
    step: int
    time: Optional[float] = None             # seconds since the sampler started; None: not known
    time_source: str = "trainer"             # "trainer" (its own sane timestamp) | "seen" (when the monitor read
                                             # the event) | "none" (no time known: no memory beside it)
    val_loss: Optional[float] = None
    rss_bytes: Optional[int] = None          # tree RSS of the latest sample at or before the validation end
    cgroup_bytes: Optional[int] = None
    working_set_bytes: Optional[int] = None  # the cgroup's usage less its inactive file cache, same sample
    gpu_bytes: Optional[int] = None          # the tree's GPU memory on its busiest device, same sample
    torch_allocated_bytes: Optional[int] = None  # torch's allocated GPU memory, as the val_end event reported it


class Metrics(_Model):
    source: str = "none"                     # "jsonl", "regex" or "none"
    last_step: Optional[int] = None
    step_per_s: Optional[float] = None
    samples_per_s: Optional[float] = None
    val_loss: Optional[float] = None
    val_points: list[ValPoint] = []
    artifact: Optional[str] = None
    steady_step_per_s: Optional[float] = None  # steps over seconds of the steady windows between train events: the
                                             # start-up left out, and every window that holds a validation
    steady_windows: int = 0                  # how many windows that is
    steady_cv: Optional[float] = None        # their rates' spread (standard deviation / mean): the within-run noise
    rate_source: str = ""                    # a regex-read trainer's step/s: "regex" (step/s or a step time) |
                                             # "wall between metric lines" (steps printed / seconds between them)
    skipped_lines: int = 0                   # lines of the log or metrics file skipped for their length (> 1 MiB)
    unread_bytes: int = 0                    # of them, left unread: written faster than the monitor could follow
    torch_allocated_bytes: Optional[int] = None      # torch's own GPU figures, the largest any event reported
    torch_reserved_bytes: Optional[int] = None       # (protocol fields gpu_allocated, gpu_reserved,
    torch_max_reserved_bytes: Optional[int] = None   # gpu_max_reserved: torch.cuda.memory_*)


class ProbeRecord(_Model):
    batch_size: int
    phase: Phase = Phase.ladder
    repeat: int = 0                          # 2.. for the extra probes of `repeats`
    retry: int = 0                           # 1.. for the retries of an inconclusive (error, timeout) probe
    variant: Optional[str] = None            # compare: the variant this run belongs to
    attempt: int = 1
    folder: str
    outcome: Outcome
    evidence: Evidence
    peaks: Peaks
    limits: Limits
    metrics: Metrics = Metrics()
    forecast: Optional["Forecast"] = None    # host memory's growth forecast (a stress probe)
    gpu_forecast: Optional["Forecast"] = None  # GPU memory's, where the GPU was judged
    started_at: float
    ended_at: float                          # when the main process was reaped
    argv: list[str]

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at

    @property
    def gpu_judged(self) -> bool:
        """The probe ran with a GPU the monitor judged (a GPU limit was resolved on its node)."""
        return self.limits.gpu_limit_bytes is not None

    @property
    def peak_bytes(self) -> int:
        """The best peak there is: the kernel's when read, else the sampled one."""
        return self.peaks.kernel_bytes if self.peaks.kernel_bytes is not None else self.peaks.sampled_rss_bytes


class Forecast(_Model):
    """Memory growth of a stress probe, extrapolated to the long run.

    Growth is modelled two ways, because the stress probe cannot tell them apart (it validates at a fixed
    interval): per validation (a leak each validation cycle) and per training step (a leak each step). Each is
    extrapolated with its own count — the long run's validations, the long run's steps — and the worse one is
    judged. With ``overnight.check_interval == stress.check_interval`` both give the same answer."""
    kind: str                                # plateau | growth | insufficient | no_long_run
    domain: str                              # "working set" or "cgroup" (against the cap), "rss" (rss_limit), "gpu"
    slope_mib_per_cycle: float = 0.0         # per validation cycle of the stress recipe
    slope_mib_per_step: float = 0.0
    raw_slope_mib_per_cycle: float = 0.0     # before the plateau test
    r2: Optional[float] = None
    points_used: int = 0
    observed_peak_bytes: int = 0
    observed_steps: int = 0
    observed_cycles: int = 0
    long_run_steps: Optional[int] = None
    long_run_cycles: Optional[int] = None
    predicted_per_validation_bytes: Optional[int] = None  # peak + slope per validation x validations to come
    predicted_per_step_bytes: Optional[int] = None        # peak + slope per step x steps to come
    model: Optional[str] = None              # "per validation" | "per step": the worse of the two, judged
    predicted_peak_bytes: Optional[int] = None
    limit_bytes: Optional[int] = None
    headroom_bytes: int = 0
    fits: Optional[bool] = None
    reason: str = ""


class MetricsPatterns(_Model):
    """For trainers that do not write HLRP_LADDER_METRICS: a regex per metric. The number is the named group
    ``value`` (else group 1, else the match); a named group ``step`` is the step the trainer printed it at."""
    step_per_s: Optional[str] = None
    samples_per_s: Optional[str] = None
    step_time_ms: Optional[str] = None       # time per step, in ms or s: turned into step/s (and samples/s x the
    step_time_s: Optional[str] = None        # probe's batch size)
    val_loss: Optional[str] = None


class ProbeRequest(_Model):
    """Everything one probe needs, resolved: what to run, its limits, how to stop it. Written to the probe
    folder as ``request.json`` (environment secrets masked) so the probe can be read, and re-run, from disk."""
    folder: Path                             # the probe folder; created by the runner
    batch_size: int
    phase: Phase
    attempt: int = 1
    repeat: int = 0
    retry: int = 0
    variant: Optional[str] = None            # compare: the variant this run belongs to
    argv: list[str]                          # run as is: no shell, values passed literally
    env: dict[str, str] = {}                 # added to the runner's environment
    cwd: str
    rss_limit_bytes: int
    cap_bytes: Optional[int] = None
    metric: str = "rss"                      # "rss" | "pss"
    interval_s: float = 0.1
    timeout_s: Optional[float] = None        # None: no limit (the long run)
    kill_grace_s: float = 5.0                # after a timeout: SIGTERM, this long, then SIGKILL
    stop_grace_s: float = 0.0                # when stopped (Ctrl-C, --force): 0 kills at once (probes); the long
                                             # run gets SIGTERM and this long to save its state first
    cgroup_name: str
    cgroup: str = Field("auto", description="where the probe's memory cgroup is made: 'auto' (find one), a "
                        "parent such as 'v1 /sys/fs/cgroup/memory/hlrp-ladder', 'job' (the enclosing cgroup of a "
                        "SLURM job, which SLURM caps), or 'none'")
    cgroup_note: str = ""                    # why there is none, when cgroup is 'none'
    probe_id: str = Field("", description="HLRP_LADDER_PROBE in the tree's environment: resume kills only "
                          "processes that carry it (or sit in the probe's cgroup)")
    heartbeat_s: float = 5.0                 # status.json every this long: memory now and at peak
    expected_s: Optional[float] = None       # how long it should run (the long run), for a scheduler's time limit
    cpus: Optional[list[int]] = None         # local: the cores the probe's tree is pinned to (its slot's)
    check_interval: Optional[int] = None     # steps between validations (numbers a regex-only trainer's)
    metrics_regex: MetricsPatterns = MetricsPatterns()
    gpu: Optional["GpuRequest"] = None       # judge GPU memory (None: a spec run before GPUs were judged)
    ranks: int = 0                           # a distributed rung's expected ranks (0: not one)
    launcher: str = "none"                   # none | torchrun | spawn | srun (srun: the job asks --ntasks=ranks)
    per_rank: bool = False                   # rss_limit_bytes applies to each rank's RSS, not the tree's sum
    rank_grace_s: float = 30.0               # how long the others may run on after a rank ended (no memory verdict)


class GpuRequest(_Model):
    """GPU memory for one probe, as the spec says it (percentages resolve on the node, against its devices)."""
    limit: str = "90%"                       # soft limit per device: a size, or a % of the device (or the cap)
    cap: Optional[str] = None                # an emulated smaller GPU
    required: bool = False                   # the spec has a memory.gpu section: no visible GPU is an error
    devices: Optional[list[int]] = None      # this slot's devices (CUDA_VISIBLE_DEVICES); None: what is visible
    count: int = 0                           # GPUs a scheduler allocates the probe (SLURM --gres=gpu:N)


ProbeRecord.model_rebuild()
ProbeRequest.model_rebuild()

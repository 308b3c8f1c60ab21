"""The spec's sections: each a strict pydantic model (an unknown key is an error) with its defaults and the
one-line descriptions ``hlrp-ladder schema`` shows."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, field_validator,
                      model_validator)

from hlrp_ladder.records import MetricsPatterns
from hlrp_ladder.spec.argv import Scalar
from hlrp_ladder.util import sizes


def _size_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Size = Annotated[str, BeforeValidator(_size_text), AfterValidator(sizes.check)]
Room = Annotated[str, BeforeValidator(_size_text), AfterValidator(sizes.check_room)]   # a headroom: 0 is one
def _regex(value: Optional[str]) -> Optional[str]:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression ({exc})") from None
    return value


def _percentage(value: str) -> str:
    text = str(value).strip()
    try:
        number = float(text.rstrip("%"))
    except ValueError:
        number = -1.0
    if not text.endswith("%") or not 0 < number < 100:
        raise ValueError(f"{value!r} is not a percentage between 0 and 100 (e.g. '5%')")
    return text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipeKeys(_Strict):
    """Trainer keys the recipe is rendered to; null leaves a knob out of the argv."""
    max_steps: Optional[str] = "training.max_steps"
    check_interval: Optional[str] = "training.validation.check_interval"
    limit_batches: Optional[str] = "training.validation.limit_batches"


class Recipe(_Strict):
    """How long a probe trains and how often it validates."""
    max_steps: PositiveInt = 35
    check_interval: PositiveInt = 30
    limit_batches: PositiveInt = 1
    keys: RecipeKeys = RecipeKeys()


class Stress(_Strict):
    """The long run's own rhythm, run at the candidate pick after the one-val ladder."""
    max_steps: PositiveInt = 220
    check_interval: PositiveInt = 50
    limit_batches: PositiveInt = 2
    timeout_s: Optional[float] = Field(None, gt=0, description="default: timeout_s scaled by max_steps")


class Launcher(_Strict):
    """How a rung starts when it is a distributed job: its ranks are found in the tree by their environment
    (RANK / SLURM_PROCID / OMPI_COMM_WORLD_RANK / PMI_RANK and the world size beside it), each rank's memory is
    recorded, and the first rank to die decides."""
    kind: Literal["none", "torchrun", "srun", "spawn"] = Field(
        "none", description="torchrun: the command under `torchrun --standalone --nproc_per_node N`; srun: under "
                            "`srun --ntasks N` inside the probe's SLURM job (sbatch --ntasks N); spawn: the command "
                            "starts its own N ranks")
    nproc_per_node: PositiveInt = Field(2, description="ranks: torchrun's --nproc_per_node, srun's --ntasks, or how "
                                        "many the command spawns")
    gpus_per_task: Optional[PositiveInt] = Field(None, description="srun: --gpus-per-task")
    rank_grace_s: float = Field(30, gt=0, le=3600, description="how long the other ranks may run on after a rank "
                                "ended with no memory verdict (an OOM-killed rank ends them at once); then they "
                                "are killed and the probe is an error, not a wait for the collective's timeout")

    @property
    def ranks(self) -> int:
        return 0 if self.kind == "none" else self.nproc_per_node


class Render(_Strict):
    """How values reach the trainer's argv."""
    bools: Optional[Literal["python", "lower", "int"]] = Field(
        None, description="booleans as True/False (python: argparse-style --flag= trainers such as nanoGPT's "
                          "configurator), true/false (lower: the bundled trainer, Hydra) or 1/0 (int); default: "
                          "python when batch_size_key is a --flag, else lower")


class ForecastConfig(_Strict):
    warmup_cycles: int = Field(1, ge=0, description="validation cycles left out of the fit (buffers filling)")


class Overnight(_Strict):
    """The long run that the ladder exists for (launched by launch-overnight)."""
    max_steps: Optional[PositiveInt] = None
    hours: Optional[float] = Field(None, gt=0, description="a time budget; steps = hours x measured step rate")
    check_interval: PositiveInt = 50
    limit_batches: PositiveInt = 2
    overrides: dict[str, Scalar] = {}
    env: dict[str, str] = {}
    tmux_session: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                                        description="default: hlrp-<name>-<run>-<folder>; used when tmux is installed")
    timeout_s: Optional[float] = Field(None, gt=0, description="stop the long run after this long (default: never)")
    kill_grace_s: float = Field(60, ge=0, description="stopping the long run (Ctrl-C, tmux kill-session, --force, "
                                "timeout): SIGTERM, this long to save a checkpoint and close loggers, then SIGKILL")


_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")


def _slurm_time(value: Optional[str]) -> Optional[str]:
    if value is not None and not _SLURM_TIME.match(str(value)):
        raise ValueError(f"{value!r} is not a SLURM time (minutes, HH:MM:SS or D-HH:MM:SS)")
    return None if value is None else str(value)


class SlurmSettings(_Strict):
    """sbatch options for each probe (and the long run); ``memory.cap`` becomes the job's ``--mem``."""
    partition: Optional[str] = None
    time: Annotated[Optional[str], BeforeValidator(lambda v: None if v is None else str(v)),
                    AfterValidator(_slurm_time)] = Field(
        None, description="--time of a probe (default: its timeout, rounded up to minutes, plus 2 minutes); the "
                          "long run's comes from overnight.hours")
    account: Optional[str] = None
    qos: Optional[str] = None
    cpus_per_task: PositiveInt = 2
    gres: Optional[str] = None
    constraint: Optional[str] = None
    extra_args: list[str] = Field([], description="more sbatch arguments, each one argv item (never a shell)")
    poll_s: float = Field(1.0, gt=0, le=60, description="the shortest time between two reads of the run's job "
                          "states (one squeue for all its jobs; below 1 s it is taken as 1 s: never more than one a "
                          "second); it backs off to 30 s while nothing changes")


class ExecutorSpec(_Strict):
    """Where probes run: here (local) or as SLURM jobs. Part of what a run measures (its fingerprint)."""
    kind: Literal["local", "slurm"] = "local"
    max_parallel: PositiveInt = Field(1, description="probes at once: SLURM jobs, or local probes each in its "
                                      "own cgroup with its own cap and its own cores")
    cpus_per_probe: Optional[PositiveInt] = Field(None, description="local: cores each probe is pinned to "
                                                  "(default: this machine's cores / max_parallel)")
    gpus_per_probe: Optional[int] = Field(None, ge=0, le=64, description="GPUs each probe gets, its own: locally "
                                          "through CUDA_VISIBLE_DEVICES, on SLURM --gres=gpu:N. Default: 1 where "
                                          "GPUs are visible (on SLURM: where the spec has memory.gpu), else 0")
    slurm: SlurmSettings = SlurmSettings()


class Preflight(_Strict):
    hosts: list[str] = Field([], description="hosts that must resolve (host) or accept a connection (host:port), "
                             "e.g. a cluster login node")
    network_timeout_s: float = Field(2.0, gt=0, le=30)
    slurm_roundtrip_s: float = Field(60, gt=0, description="SLURM: how long the round-trip job that checks the "
                                     "shared runs folder may wait in the queue before it is called unverified")


def _absolute(value: Optional[str]) -> Optional[str]:
    if value is not None and value.strip().endswith("%"):
        raise ValueError(f"{value!r}: an emulated GPU is a size (e.g. '40GiB'), not a share of the real one")
    return value


class GpuMemory(_Strict):
    """GPU memory, judged per device the way host memory is: a soft limit the monitor enforces (crossing it kills
    the tree: ``gpu_breach``), the headroom a pick must leave on its busiest device, and an emulated smaller GPU.
    Percentages resolve on the node where the probe runs, against each device's memory (the cap's, when set)."""
    limit: Size = Field("90%", description="soft limit per device: a size, or a % of the device's memory (of the "
                        "cap, when set); crossing it kills the probe's tree (gpu_breach)")
    headroom: Optional[Room] = Field("2GiB", description="left free under the GPU limit at the pick's peak, on its "
                                     "busiest device: a size, or a % of that limit")
    cap: Optional[Annotated[Size, AfterValidator(_absolute)]] = Field(
        None, description="an emulated smaller GPU ('40GiB'): CUDA MPS's pinned device memory limit where MPS runs "
                          "(every allocation, any framework), else torch's per-process memory fraction")


class Memory(_Strict):
    rss_limit: Size = Field("85%", description="soft limit the monitor enforces on the tree's summed "
                            "`metric`: a size ('28GiB') or a share of total RAM ('85%')")
    cap: Optional[Size] = Field(None, description="hard kernel limit through a memory cgroup (charged "
                                "memory, not RSS), to emulate a smaller machine")
    metric: Literal["rss", "pss"] = "rss"
    sample_interval_s: float = Field(0.1, gt=0, le=10)
    headroom: Optional[Room] = Field(None, description="left free at the pick's peak — its working set under the "
                                     "cap, or its RSS under the soft limit without a cap: a size, or a % of that "
                                     "limit")
    per_rank: bool = Field(False, description="a distributed rung: rss_limit applies to each rank (the cluster's "
                           "--mem-per-cpu/--mem-per-gpu world) and headroom to the worst rank; the cap stays the "
                           "whole job's")
    gpu: Optional[GpuMemory] = Field(None, description="GPU memory, judged per device (limit, headroom, cap). "
                                     "Left out: judged with the defaults wherever a probe sees a GPU; given: a "
                                     "probe that sees none is an error (and a preflight blocker)")

    def rss_limit_bytes(self, total: int) -> int:
        """The soft limit in bytes; a percentage is of ``total`` (the memory the probes can really use: the
        caller resolves it, see ``probe.host.usable_memory``)."""
        return sizes.resolve(self.rss_limit, total)

    def cap_bytes(self, total: int) -> int | None:
        return None if self.cap is None else sizes.resolve(self.cap, total)

    def fit_limit(self, total: int) -> tuple[int, str]:
        """The limit a pick's peak must fit under: the cap if set (its working set, see search.fit_peak), else
        the soft limit (its RSS)."""
        cap = self.cap_bytes(total)
        return (cap, "cap") if cap is not None else (self.rss_limit_bytes(total), "soft limit")

    def headroom_bytes(self, total: int) -> int:
        return 0 if self.headroom is None else sizes.resolve(self.headroom, self.fit_limit(total)[0], allow_zero=True)


class MetricsRegex(MetricsPatterns):
    """For trainers that do not write HLRP_LADDER_METRICS: a regex per metric; the number is the named group
    ``value`` (else group 1), and a named group ``step`` places it at the step the trainer printed. A line matching
    ``val_loss`` counts as a validation end, timed when the monitor reads it. ``step_time_ms``/``step_time_s``
    (nanoGPT's ``time 84.59ms``) become step/s, and samples/s is that times the probe's batch size."""
    model_config = ConfigDict(extra="forbid")

    @field_validator("step_per_s", "samples_per_s", "step_time_ms", "step_time_s", "val_loss")
    @classmethod
    def _compiles(cls, value: Optional[str]) -> Optional[str]:
        value = _regex(value)
        if value is not None:
            names = set(re.compile(value).groupindex)
            if names - {"value", "step"}:
                raise ValueError(f"{value!r}: named groups may be 'value' and 'step' only (got "
                                 f"{', '.join(sorted(names - {'value', 'step'}))})")
            if "step" in names and "value" not in names:  # else group 1, the step, would be read as the value
                raise ValueError(f"{value!r}: a regex with a (?P<step>...) group names its number (?P<value>...)")
        return value


class Range(_Strict):
    start: PositiveInt
    stop: PositiveInt
    step: PositiveInt


VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Pair(_Strict):
    """Two variants to compare, and the keys the comparison is about (its other differences are flagged)."""
    a: str
    b: str
    about: list[str] = []


class CompareSpec(_Strict):
    """A matrix of variants run at one batch size, each ``repeats`` times, to see what a setting costs."""
    batch_size: Union[PositiveInt, Literal["pick"]] = Field(..., description="a batch size, or 'pick': the latest "
                                                             "finished ladder run's pick of this spec")
    max_steps: PositiveInt = 1000
    check_interval: PositiveInt = 400
    limit_batches: Optional[PositiveInt] = Field(None, description="null leaves the trainer's default (a variant "
                                                 "may set it)")
    repeats: PositiveInt = Field(2, le=100, description="runs per variant; the noise band of every delta comes from "
                                 "them")
    warmup: bool = Field(True, description="one short run of the first variant before the matrix, not counted: "
                         "the first runs on a cold page cache are charged the libraries and data they read in "
                         "(measured: ~130 MiB more on the bundled trainer), which would pose as a variant's cost")
    timeout_s: Optional[float] = Field(None, gt=0, description="per run (default: timeout_s scaled by max_steps)")
    variants: dict[Annotated[str, Field(pattern=VARIANT_NAME)], dict[str, Scalar]] = Field(
        ..., min_length=1, max_length=100, description="name -> overrides (key: value; 'env.NAME: value' sets an environment "
                                       "variable)")
    pairs: Optional[list[Pair]] = Field(None, description="default: every variant against the first, about what "
                                        "differs")
    target_effect: Optional[Annotated[str, AfterValidator(_percentage)]] = Field(
        None, description="the smallest throughput difference worth knowing, e.g. '5%': after the first round "
                          "compare adds rounds (one more run of every variant) while a pair is undecided, up to "
                          "max_repeats; each pair ends 'faster/slower by X %', 'within ±target' or out of repeats")
    max_repeats: Optional[PositiveInt] = Field(None, le=100, description="with target_effect: runs per variant at "
                                               "most (default: 4 x repeats, at least 8)")
    seed_key: Optional[str] = Field(None, description="a trainer key set to the run's number (1, 2, ...) in each "
                                    "repeat, so a deterministic trainer shows its noise; a variant may set it itself")

    def most_repeats(self) -> int:
        """Runs per variant at most: ``repeats`` without a target, else ``max_repeats``."""
        if self.target_effect is None:
            return self.repeats
        return max(self.repeats, self.max_repeats or max(8, 4 * self.repeats))

    def target_pct(self) -> Optional[float]:
        return None if self.target_effect is None else float(self.target_effect.strip().rstrip("%"))

    @field_validator("variants", mode="before")
    @classmethod
    def _scalars(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, items in value.items():
                if items is None:
                    value[name] = {}
                elif not isinstance(items, dict):
                    raise ValueError(f"{name}: a variant is a mapping of overrides (key: value)")
                else:
                    for key, item in items.items():
                        if isinstance(item, (dict, list)):
                            raise ValueError(f"{name}.{key}: a value must be a scalar, got {type(item).__name__}")
        return value

    @model_validator(mode="after")
    def _repeats_fit(self) -> "CompareSpec":
        if self.max_repeats is not None and self.target_effect is None:
            raise ValueError("max_repeats: only with target_effect (it bounds the rounds added to decide)")
        if self.max_repeats is not None and self.max_repeats < self.repeats:
            raise ValueError(f"max_repeats ({self.max_repeats}) is below repeats ({self.repeats})")
        return self

    @model_validator(mode="after")
    def _pairs_name_variants(self) -> "CompareSpec":
        for i, pair in enumerate(self.pairs or []):
            for side in (pair.a, pair.b):
                if side not in self.variants:
                    raise ValueError(f"pairs[{i}]: no variant named {side!r} (variants: {', '.join(self.variants)})")
        return self

"""The ladder spec: which batch sizes to probe, how, under which limits; what it renders to (argv), what
identifies what a run measures (fingerprint), and its snapshot with secrets masked."""
from __future__ import annotations

import hashlib
import json
import sys
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BeforeValidator, Field, PositiveInt, field_validator, model_validator

from hlrp_ladder.records import Phase
from hlrp_ladder.spec import argv
from hlrp_ladder.spec.sections import (CompareSpec, ExecutorSpec, ForecastConfig, Launcher, Memory, MetricsRegex,
                                       Overnight, Preflight, Range, Recipe, Render, Scalar, Stress, _Strict)
from hlrp_ladder.util.masking import MASK, mask


MAX_RUNGS = 1000   # a grid larger than this is a typo (an extra zero), and the policy walks the grid often


def _too_many(count: int) -> str:
    return (f"{count:,} rungs, more than the {MAX_RUNGS:,} a ladder may have: use a coarser step (refine: bisect "
            f"or model then probes only a handful of them)")


def _expand_batch_sizes(value: Any) -> Any:
    if isinstance(value, dict):
        rng = Range.model_validate(value)
        if rng.stop < rng.start:
            raise ValueError(f"stop ({rng.stop}) is below start ({rng.start})")
        count = (rng.stop - rng.start) // rng.step + 1  # counted before anything is expanded
        if count > MAX_RUNGS:
            raise ValueError(_too_many(count))
        return list(range(rng.start, rng.stop + 1, rng.step))
    if isinstance(value, list) and len(value) > MAX_RUNGS:
        raise ValueError(_too_many(len(value)))
    return value


def _ascending(values: list[int]) -> list[int]:
    if not values:
        raise ValueError("needs at least one batch size")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"must be strictly ascending (got {values})")
    return values


class Spec(_Strict):
    """A ladder: which batch sizes to probe, how, and under which memory limits."""
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    command: Optional[list[str]] = Field(None, min_length=1, description="probe argv (no shell); default: the "
                                         "bundled trainer, [python, -m, trainer.train]")
    batch_sizes: Annotated[list[PositiveInt], BeforeValidator(_expand_batch_sizes), AfterValidator(_ascending)]
    batch_size_key: str = "data.loader.batch_size"
    probe: Recipe = Recipe()
    overrides: dict[str, Scalar] = {}
    env: dict[str, str] = {}
    memory: Memory = Memory()
    launcher: Launcher = Launcher()
    render: Render = Render()
    timeout_s: float = Field(900, gt=0)
    kill_grace_s: float = Field(5, ge=0)
    runs_dir: str = "runs"
    metrics_regex: MetricsRegex = MetricsRegex()
    stress: Optional[Stress] = None
    refine: Literal["none", "bisect", "model"] = Field(
        "none", description="bisect: probe the first and last rung, then bisect between the last ok and the first "
                            "failure; model: the first two rungs, then where a line through the peaks puts the "
                            "limit (bisection when the line does not fit)")
    granularity: PositiveInt = Field(4, description="bisect until the first failure is this close to the last ok")
    repeats: PositiveInt = Field(1, le=20, description="one-val probes of a candidate before it can be picked "
                                 "(max peak over them must fit)")
    retries: int = Field(1, ge=0, le=5, description="runs again of a probe that ended inconclusive (error, timeout: "
                         "not a memory verdict), each in its own folder, before the run ends inconclusive")
    forecast: ForecastConfig = ForecastConfig()
    warmup: bool = Field(True, description="a short probe of the first rung before the ladder, not counted: the "
                         "first probe on a cold page cache is charged the libraries and data it reads in (on a "
                         "fresh clone the demo's bs=8 peaked at the whole 1.25 GiB cap; warm, 0.97 GiB)")
    overnight: Optional[Overnight] = None
    preflight: Preflight = Preflight()
    executor: ExecutorSpec = ExecutorSpec()
    compare: Optional[CompareSpec] = None

    @field_validator("overrides", mode="before")
    @classmethod
    def _scalars(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, (dict, list)):
                    raise ValueError(f"{key}: a value must be a scalar (string, number, bool or null), "
                                     f"got {type(item).__name__}")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
        return value

    # ---- derived -----------------------------------------------------------------------------------------
    def bools(self) -> str:
        """How booleans are rendered: render.bools, else chosen from the argv style (``--flag=``: Python's)."""
        return self.render.bools or ("python" if self.batch_size_key.startswith("-") else "lower")

    def trainer_command(self) -> list[str]:
        """The trainer's own command, without its launcher (what preflight checks)."""
        return list(self.command) if self.command else [sys.executable, "-m", "trainer.train"]

    def base_command(self) -> list[str]:
        """The probe's command under its launcher (``launcher``: torchrun, srun, or as it is)."""
        return argv.launch(self.trainer_command(), self.launcher.kind, self.launcher.nproc_per_node,
                           self.launcher.gpus_per_task)

    @model_validator(mode="after")
    def _launcher_fits(self) -> "Spec":
        lau = self.launcher
        if lau.kind == "srun" and self.executor.kind != "slurm":
            raise ValueError("launcher.kind srun starts the ranks as the tasks of the probe's SLURM job: it needs "
                             "executor.kind: slurm (locally, torchrun or spawn)")
        if lau.gpus_per_task is not None and lau.kind != "srun":
            raise ValueError("launcher.gpus_per_task is srun's --gpus-per-task: it needs launcher.kind: srun")
        if self.memory.per_rank and (lau.kind == "none" or self.memory.metric != "rss"):
            raise ValueError("memory.per_rank holds each rank's RSS to rss_limit: it needs a launcher (launcher.kind) "
                             "and memory.metric: rss")
        return self

    def recipe(self, phase: Phase) -> Recipe:
        """The probe recipe of a phase: the stress recipe for ``stress``, the one-val one otherwise."""
        if phase == "stress" and self.stress is not None:
            return Recipe(max_steps=self.stress.max_steps, check_interval=self.stress.check_interval,
                          limit_batches=self.stress.limit_batches, keys=self.probe.keys)
        return self.probe

    def timeout(self, phase: Phase) -> float:
        if phase == "stress" and self.stress is not None:
            return self.stress.timeout_s or self.timeout_s * max(1.0, self.stress.max_steps / self.probe.max_steps)
        return self.timeout_s

    def argv(self, batch_size: int, recipe: Recipe | None = None, extra: dict | None = None) -> list[str]:
        """The probe's argv: command, overrides, recipe, batch size, each ``key=value`` as one item."""
        recipe = recipe or self.probe
        items = {**self.overrides, **(extra or {})}
        for field in ("max_steps", "check_interval", "limit_batches"):
            key = getattr(recipe.keys, field)
            if key:
                items[key] = getattr(recipe, field)
        items[self.batch_size_key] = batch_size
        return argv.argv(self.base_command(), items, self.bools())

    def fingerprint(self) -> str:
        """Identifies what a run measures; ``--resume`` refuses a spec whose fingerprint changed."""
        # The long run's settings, the preflight's and a compare matrix do not change what the ladder measures.
        data = self.model_dump(mode="json", exclude={"runs_dir", "overnight", "preflight", "compare"})
        return hashlib.sha256(json.dumps(self.settled(data), sort_keys=True).encode()).hexdigest()[:16]

    def settled(self, data: dict) -> dict:
        """``data`` (a dump of this spec, or of some of its sections) with the keys added after runs were first
        fingerprinted left out while they change nothing, so a run started before them still resumes; and the
        boolean spelling as it is used, where it is not the old one."""
        for section, key in (("memory", "gpu"), ("executor", "gpus_per_probe"), ("metrics_regex", "step_time_ms"),
                             ("metrics_regex", "step_time_s")):
            if section in data and data[section].get(key) is None:
                data[section].pop(key, None)
        if "memory" in data and not data["memory"].get("per_rank"):
            data["memory"].pop("per_rank", None)
        if data.get("launcher", {}).get("kind") == "none":
            data.pop("launcher")
        data.pop("render", None)
        values = list(self.overrides.values()) + [v for variant in (self.compare.variants.values() if self.compare
                                                                     else []) for v in variant.values()]
        if self.bools() != "lower" and any(isinstance(v, bool) for v in values):
            data["render"] = {"bools": self.bools()}  # how booleans reach the trainer is part of what it measures
        return data

    def masked(self) -> dict:
        data = self.model_dump(mode="json")
        data["env"] = mask(data["env"])
        data["overrides"] = mask(data["overrides"])
        if data.get("overnight"):
            data["overnight"]["env"] = mask(data["overnight"]["env"])
            data["overnight"]["overrides"] = mask(data["overnight"]["overrides"])
        return data


def masked_keys(data: dict) -> list[str]:
    """Keys whose values a snapshot masked (so it cannot be launched as it is)."""
    out = [f"env.{k}" for k, v in (data.get("env") or {}).items() if v == MASK]
    out += [f"overrides.{k}" for k, v in (data.get("overrides") or {}).items() if v == MASK]
    night = data.get("overnight") or {}
    out += [f"overnight.env.{k}" for k, v in (night.get("env") or {}).items() if v == MASK]
    out += [f"overnight.overrides.{k}" for k, v in (night.get("overrides") or {}).items() if v == MASK]
    return out

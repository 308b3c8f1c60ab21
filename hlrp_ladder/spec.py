"""The ladder spec: pydantic models and a YAML loader whose every error is one line ``file:line: key: why``."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt,
                      ValidationError, field_validator, model_validator)

from hlrp_ladder import policy, sizes
from hlrp_ladder.records import MetricsPatterns
from hlrp_ladder.masking import MASK, mask, mask_argv  # noqa: F401  (re-exported: the spec masks its snapshot)



class SpecError(ValueError):
    """A mistake in a spec file; ``str()`` is the one line to show."""


def _size_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Size = Annotated[str, BeforeValidator(_size_text), AfterValidator(sizes.check)]
Scalar = Union[bool, int, float, str, None]


def _regex(value: Optional[str]) -> Optional[str]:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression ({exc})") from None
    return value


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
    poll_s: float = Field(1.0, gt=0, le=60, description="how often job states are read (scontrol)")


class ExecutorSpec(_Strict):
    """Where probes run: here (local) or as SLURM jobs. Part of what a run measures (its fingerprint)."""
    kind: Literal["local", "slurm"] = "local"
    max_parallel: PositiveInt = Field(1, description="probes at once: SLURM jobs, or local probes each in its "
                                      "own cgroup with its own cap and its own cores")
    cpus_per_probe: Optional[PositiveInt] = Field(None, description="local: cores each probe is pinned to "
                                                  "(default: this machine's cores / max_parallel)")
    slurm: SlurmSettings = SlurmSettings()

    def probe_cpus(self, cores: list[int]) -> Optional[list[list[int]]]:
        """Local: the cores of each slot (disjoint), or None for one slot with no pinning asked for."""
        if self.max_parallel == 1 and self.cpus_per_probe is None:
            return None
        each = self.cpus_per_probe or max(1, len(cores) // self.max_parallel)
        return [cores[i * each:(i + 1) * each] for i in range(self.max_parallel)]


class Preflight(_Strict):
    hosts: list[str] = Field([], description="hosts that must resolve (host) or accept a connection (host:port), "
                             "e.g. a cluster login node")
    network_timeout_s: float = Field(2.0, gt=0, le=30)
    slurm_roundtrip_s: float = Field(60, gt=0, description="SLURM: how long the round-trip job that checks the "
                                     "shared runs folder may wait in the queue before it is called unverified")


class Memory(_Strict):
    rss_limit: Size = Field("85%", description="soft limit the monitor enforces on the tree's summed "
                            "`metric`: a size ('28GiB') or a share of total RAM ('85%')")
    cap: Optional[Size] = Field(None, description="hard kernel limit through a memory cgroup (charged "
                                "memory, not RSS), to emulate a smaller machine")
    metric: Literal["rss", "pss"] = "rss"
    sample_interval_s: float = Field(0.1, gt=0, le=10)
    headroom: Optional[Size] = Field(None, description="left free at the pick's peak — its working set under the "
                                     "cap, or its RSS under the soft limit without a cap: a size, or a % of that "
                                     "limit")

    def rss_limit_bytes(self, total: int | None = None) -> int:
        """The soft limit in bytes; a percentage is of ``total`` (default: the memory this process can really
        use — MemTotal, or less under a container's or a job's cgroup limit)."""
        return sizes.resolve(self.rss_limit, total or _usable())

    def cap_bytes(self, total: int | None = None) -> int | None:
        return None if self.cap is None else sizes.resolve(self.cap, total or _usable())

    def fit_limit(self, total: int | None = None) -> tuple[int, str]:
        """The limit a pick's peak must fit under: the cap if set (its working set, see policy.fit_peak), else
        the soft limit (its RSS)."""
        cap = self.cap_bytes(total)
        return (cap, "cap") if cap is not None else (self.rss_limit_bytes(total), "soft limit")

    def headroom_bytes(self, total: int | None = None) -> int:
        return 0 if self.headroom is None else sizes.resolve(self.headroom, self.fit_limit(total)[0])


def _usable() -> int:
    from hlrp_ladder.host import usable_memory

    return usable_memory()


class MetricsRegex(MetricsPatterns):
    """For trainers that do not write HLRP_LADDER_METRICS: a regex per metric, group 1 is the number. A line
    matching ``val_loss`` counts as a validation end, timed when the monitor reads it."""
    model_config = ConfigDict(extra="forbid")

    @field_validator("step_per_s", "samples_per_s", "val_loss")
    @classmethod
    def _compiles(cls, value: Optional[str]) -> Optional[str]:
        return _regex(value)


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
    repeats: PositiveInt = Field(2, description="runs per variant; the noise band of every delta comes from them")
    warmup: bool = Field(True, description="one short run of the first variant before the matrix, not counted: "
                         "the first runs on a cold page cache are charged the libraries and data they read in "
                         "(measured: ~130 MiB more on the bundled trainer), which would pose as a variant's cost")
    timeout_s: Optional[float] = Field(None, gt=0, description="per run (default: timeout_s scaled by max_steps)")
    variants: dict[Annotated[str, Field(pattern=VARIANT_NAME)], dict[str, Scalar]] = Field(
        ..., min_length=1, description="name -> overrides (key: value; 'env.NAME: value' sets an environment "
                                       "variable)")
    pairs: Optional[list[Pair]] = Field(None, description="default: every variant against the first, about what "
                                        "differs")

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
    def _pairs_name_variants(self) -> "CompareSpec":
        for i, pair in enumerate(self.pairs or []):
            for side in (pair.a, pair.b):
                if side not in self.variants:
                    raise ValueError(f"pairs[{i}]: no variant named {side!r} (variants: {', '.join(self.variants)})")
        return self


def _expand_batch_sizes(value: Any) -> Any:
    if isinstance(value, dict):
        rng = Range.model_validate(value)
        if rng.stop < rng.start:
            raise ValueError(f"stop ({rng.stop}) is below start ({rng.start})")
        return list(range(rng.start, rng.stop + 1, rng.step))
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
    repeats: PositiveInt = Field(1, description="one-val probes of a candidate before it can be picked "
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
    def base_command(self) -> list[str]:
        return list(self.command) if self.command else [sys.executable, "-m", "trainer.train"]

    def recipe(self, phase: str) -> Recipe:
        """The probe recipe of a phase: the stress recipe for ``stress``, the one-val one otherwise."""
        if phase == "stress" and self.stress is not None:
            return Recipe(max_steps=self.stress.max_steps, check_interval=self.stress.check_interval,
                          limit_batches=self.stress.limit_batches, keys=self.probe.keys)
        return self.probe

    def timeout(self, phase: str) -> float:
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
        return self.base_command() + [f"{k}={_render(v)}" for k, v in items.items()]

    def plan(self, total: int | None = None) -> policy.Plan:
        """The policy's view of this spec, sizes resolved against ``total`` bytes (default: this machine).
        A run stores it in ``ladder.json`` when it starts; reports and resumes read that, not this."""
        limit, name = self.memory.fit_limit(total)
        recipe = ""
        if self.stress is not None:
            st = self.stress
            recipe = f"{st.max_steps} steps, validation every {st.check_interval} over {st.limit_batches} batches"
        night = self.overnight
        return policy.Plan(batch_sizes=self.batch_sizes, refine=self.refine, granularity=self.granularity,
                           repeats=self.repeats, retries=self.retries, stress=self.stress is not None,
                           stress_recipe=recipe,
                           forecast_required=night is not None and bool(night.max_steps or night.hours),
                           limit_bytes=limit, limit_name=name, headroom_bytes=self.memory.headroom_bytes(total),
                           rss_limit_bytes=self.memory.rss_limit_bytes(total), cap_bytes=self.memory.cap_bytes(total),
                           stress_weight=round(self.stress.max_steps / self.probe.max_steps, 2) if self.stress else 6.0,
                           peak_measure="working set")

    def summary_lines(self, source: str) -> list[str]:
        """What `validate` prints: the limits, and every probe's argv and env diff."""
        import shlex

        mem = self.memory
        cap = "none" if mem.cap is None else f"{mem.cap} = {mem.cap_bytes() / 2**30:.2f} GiB (cgroup charge)"
        lines = [f"{source}: ok — {len(self.batch_sizes)} rungs {self.batch_sizes}; soft limit {mem.rss_limit} = "
                 f"{mem.rss_limit_bytes() / 2**30:.2f} GiB ({mem.metric}); cap {cap}; timeout {self.timeout_s:g} s",
                 "env: " + " ".join(f"{k}={v}" for k, v in
                                    mask({**self.env, "HLRP_LADDER_METRICS": "<probe folder>/metrics.jsonl"}).items())]
        lines += [f"bs={bs}: {shlex.join(mask_argv(self.argv(bs)))}" for bs in self.batch_sizes]
        if self.stress is not None:
            argv = shlex.join(mask_argv(self.argv(0, self.recipe("stress"))))
            lines.append(f"stress, at each candidate from the pick down (here bs=N): {argv[:-1]}N "
                         f"(timeout {self.timeout('stress'):.0f} s)")
        plan = self.plan()
        extras = [f"refine={plan.refine} granularity={plan.granularity}" if plan.refine != "none" else "",
                  f"repeats={plan.repeats}" if plan.repeats > 1 else "",
                  f"headroom {plan.headroom_bytes / 2**30:.2f} GiB under the {plan.limit_name}"
                  if plan.headroom_bytes else ""]
        if any(extras):
            lines.append("; ".join(e for e in extras if e))
        if self.compare is not None:
            from hlrp_ladder import compare

            cmp = self.compare
            bs = cmp.batch_size if cmp.batch_size != "pick" else "<the ladder's pick>"
            lines.append(f"compare: {len(cmp.variants)} variants x {cmp.repeats} runs at bs={bs}, {cmp.max_steps} "
                         f"steps, validation every {cmp.check_interval}")
            for name in cmp.variants:
                argv, env = compare.effective(self, name, 0 if bs == "<the ladder's pick>" else bs)
                extra = {k: v for k, v in env.items() if k not in self.env}
                lines.append(f"  {name}: {shlex.join(mask_argv(argv))}" +
                             (f"   env {' '.join(f'{k}={v}' for k, v in mask(extra).items())}" if extra else ""))
            for pair in compare.pairs(self, 0 if bs == "<the ladder's pick>" else bs):
                lines.append(f"  pair {pair.b} vs {pair.a}, about {', '.join(pair.about) or '-'}"
                             + (f": NOT apples to apples, {pair.extra_text}" if pair.extra else ""))
        return lines

    def fingerprint(self) -> str:
        """Identifies what a run measures; ``--resume`` refuses a spec whose fingerprint changed."""
        # The long run's settings, the preflight's and a compare matrix do not change what the ladder measures.
        data = self.model_dump(mode="json", exclude={"runs_dir", "overnight", "preflight", "compare"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def masked(self) -> dict:
        data = self.model_dump(mode="json")
        data["env"] = mask(data["env"])
        data["overrides"] = mask(data["overrides"])
        if data.get("overnight"):
            data["overnight"]["env"] = mask(data["overnight"]["env"])
            data["overnight"]["overrides"] = mask(data["overnight"]["overrides"])
        return data


def _render(value: Scalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def masked_keys(data: dict) -> list[str]:
    """Keys whose values a snapshot masked (so it cannot be launched as it is)."""
    out = [f"env.{k}" for k, v in (data.get("env") or {}).items() if v == MASK]
    out += [f"overrides.{k}" for k, v in (data.get("overrides") or {}).items() if v == MASK]
    night = data.get("overnight") or {}
    out += [f"overnight.env.{k}" for k, v in (night.get("env") or {}).items() if v == MASK]
    out += [f"overnight.overrides.{k}" for k, v in (night.get("overrides") or {}).items() if v == MASK]
    return out


# ---------------------------------------------------------------------------------------------------- loading
class _Loader(yaml.SafeLoader):
    """YAML 1.1 without base-60 numbers: ``time: 1:30:00`` is the string a SLURM user means, not 5400."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_yaml(text: str):
    """YAML as a spec is read (no base-60 numbers)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """YAML path -> 1-based line of its value (and of the key, under the path + ('<key>',))."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key, "<key>")] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out)
    return out


def _locate(loc: tuple, lines: dict[tuple, int], key_line: bool) -> int:
    path: tuple = ()
    for part in loc:
        if path + (part,) in lines:
            path = path + (part,)
    if key_line and path + ("<key>",) in lines:
        return lines[path + ("<key>",)]
    return lines.get(path, 1)


def _message(err: dict) -> str:
    msg = err["msg"]
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    return f"{msg} (got {err.get('input')!r})"


def _loc_text(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))


def parse_spec(text: str, source: str) -> Spec:
    """Validate a spec from YAML text; ``source`` names it in errors."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}{line}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}:1: a spec is a mapping of keys (name, batch_sizes, ...)")
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        lines = _line_map(node)
        line = _locate(err["loc"], lines, key_line=err["type"] in ("extra_forbidden", "missing"))
        key = _loc_text(err["loc"]) or "spec"
        raise SpecError(f"{source}:{line}: {key}: {_message(err)}") from None


def load_spec(path: str | os.PathLike) -> Spec:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(f"{p}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{p}: cannot read ({exc.strerror})") from None
    return parse_spec(text, str(p))

"""The variant matrix: what each variant runs, how two of them differ, and the deltas between them with the
noise band their repeats give. Pure: no I/O, no processes.

A delta is called ``faster``/``slower`` (``more memory``/``less memory``, ``higher loss``/``lower loss``) only
when its 95 % Welch interval — the difference of the means, with each side's own variance — leaves out zero;
otherwise it is ``within noise``. With one run per variant there is no variance to estimate: the delta is shown,
and the verdict says ``no noise band`` rather than pretend.
"""
from __future__ import annotations

import shlex
import statistics
from dataclasses import dataclass
from typing import Optional

from hlrp_ladder.records import MARKER_ENV, METRICS_ENV, Outcome, ProbeRecord
from hlrp_ladder.search import stats
from hlrp_ladder.spec import argv as argvs
from hlrp_ladder.spec.model import Spec
from hlrp_ladder.util.masking import mask, mask_argv

ENV_PREFIX = "env."
METRICS = {  # name -> (how to read it off a record, the words for up / down)
    "samples_per_s": (lambda r: r.metrics.samples_per_s, ("faster", "slower")),
    "step_per_s": (lambda r: r.metrics.step_per_s, ("faster", "slower")),
    "peak_bytes": (lambda r: r.peak_bytes, ("more memory", "less memory")),
    "val_loss": (lambda r: r.metrics.val_loss, ("higher loss", "lower loss")),
}


def split(variant: dict) -> tuple[dict, dict]:
    """A variant's overrides and its environment (``env.NAME`` keys)."""
    overrides = {k: v for k, v in variant.items() if not k.startswith(ENV_PREFIX)}
    env = {k[len(ENV_PREFIX):]: "" if v is None else str(v) for k, v in variant.items() if k.startswith(ENV_PREFIX)}
    return overrides, env


def effective(spec: Spec, name: str, batch_size: int) -> tuple[list[str], dict[str, str]]:
    """The argv and environment a variant's runs get: the spec's overrides, the compare recipe, the variant's
    own overrides (they win), the batch size."""
    cmp = spec.compare
    overrides, env = split(cmp.variants[name])
    keys = spec.probe.keys
    items = dict(spec.overrides)
    for key, value in ((keys.max_steps, cmp.max_steps), (keys.check_interval, cmp.check_interval),
                       (keys.limit_batches, cmp.limit_batches)):
        if key and value is not None:
            items[key] = value
    items.update(overrides)
    items[spec.batch_size_key] = batch_size
    return argvs.argv(spec.base_command(), items), {**spec.env, **env}


def settings(spec: Spec, name: str, batch_size: int) -> dict[str, str]:
    """Everything that makes a run what it is, as ``key -> value``: the command, each override, each
    environment variable (``env.NAME``). The bookkeeping variables hlrp-ladder adds are left out."""
    argv, env = effective(spec, name, batch_size)
    base = spec.base_command()
    out = {"command": " ".join(base)}
    for item in argv[len(base):]:
        key, _, value = item.partition("=")
        out[key] = value
    out.update({f"{ENV_PREFIX}{k}": v for k, v in env.items() if k not in (METRICS_ENV, MARKER_ENV)})
    return out


def differences(spec: Spec, a: str, b: str, batch_size: int) -> list[str]:
    """The keys whose values differ between two variants' runs (a key one side lacks differs too)."""
    sa, sb = settings(spec, a, batch_size), settings(spec, b, batch_size)
    return sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))


@dataclass(frozen=True)
class PairSpec:
    a: str
    b: str
    about: list[str]
    extra: list[str]                       # differences beyond `about`: not apples to apples
    extra_text: str                        # "also differs in data=oxe_local_language_table (a: oxe_local_spe0)"


def pairs(spec: Spec, batch_size: int) -> list[PairSpec]:
    """The spec's pairs (default: every variant against the first, about what differs), each with the
    differences beyond what it is about."""
    cmp = spec.compare
    names = list(cmp.variants)
    wanted = [(p.a, p.b, list(p.about)) for p in cmp.pairs] if cmp.pairs is not None else \
        [(names[0], other, differences(spec, names[0], other, batch_size)) for other in names[1:]]
    out = []
    for a, b, about in wanted:
        diff = differences(spec, a, b, batch_size)
        extra = [k for k in diff if k not in about]
        sa, sb = settings(spec, a, batch_size), settings(spec, b, batch_size)
        text = "; ".join(f"{k}={sb.get(k, '(unset)')} ({a}: {sa.get(k, '(unset)')})" for k in extra)
        out.append(PairSpec(a, b, about, extra, f"also differs in {text}" if extra else ""))
    return out


@dataclass(frozen=True)
class Delta:
    a: Optional[float]                     # mean over the a side's passing runs
    b: Optional[float]
    delta: Optional[float]                 # b - a
    delta_pct: Optional[float]             # of a
    low_pct: Optional[float]               # the 95 % Welch interval of delta, in % of a (None: no band)
    high_pct: Optional[float]
    verdict: str                           # faster | slower | ... | within noise | no noise band | no data
    n: tuple[int, int] = (0, 0)


def delta(a_values: list[Optional[float]], b_values: list[Optional[float]], words: tuple[str, str]) -> Delta:
    """b's mean against a's, with the 95 % Welch interval of the difference (``stats.welch_interval``, exact
    Student-t quantiles) and the verdict it allows."""
    a_values = [v for v in a_values if v is not None]
    b_values = [v for v in b_values if v is not None]
    if not a_values or not b_values:
        return Delta(None, None, None, None, None, None, "no data", (len(a_values), len(b_values)))
    ma, mb = statistics.fmean(a_values), statistics.fmean(b_values)
    d = mb - ma
    pct = None if ma == 0 else 100 * d / ma
    n = (len(a_values), len(b_values))
    band = stats.welch_interval(a_values, b_values)
    if band is None:
        return Delta(ma, mb, d, pct, None, None, "no noise band", n)
    if band.se == 0:  # every repeat of both sides gave the same number: no noise was measured, none is known
        return Delta(ma, mb, d, pct, None, None, "no noise measured", n)
    low, high = band.low, band.high
    verdict = words[0] if low > 0 else words[1] if high < 0 else "within noise"
    scale = (lambda x: 100 * x / ma) if ma else (lambda x: None)
    return Delta(ma, mb, d, pct, scale(low), scale(high), verdict, n)


def pair_metrics(records_a: list[ProbeRecord], records_b: list[ProbeRecord]) -> dict[str, Delta]:
    """Every metric's delta between the passing runs of two variants."""
    ok_a = [r for r in records_a if r.outcome == Outcome.ok]
    ok_b = [r for r in records_b if r.outcome == Outcome.ok]
    return {name: delta([read(r) for r in ok_a], [read(r) for r in ok_b], words)
            for name, (read, words) in METRICS.items()}


def run_folder(variant: str, repeat: int) -> str:
    """A compare run's probe folder: <variant>-r1, <variant>-r2, ..."""
    return f"{variant}-r{repeat}"


def summary_lines(spec: Spec) -> list[str]:
    """What ``validate`` prints of a compare section: every variant's argv and environment, every pair and
    whether it is apples to apples."""
    cmp = spec.compare
    if cmp is None:
        return []
    bs = cmp.batch_size if cmp.batch_size != "pick" else "<the ladder's pick>"
    at = 0 if cmp.batch_size == "pick" else cmp.batch_size
    lines = [f"compare: {len(cmp.variants)} variants x {cmp.repeats} runs at bs={bs}, {cmp.max_steps} steps, "
             f"validation every {cmp.check_interval}"]
    for name in cmp.variants:
        argv, env = effective(spec, name, at)
        extra = {k: v for k, v in env.items() if k not in spec.env}
        lines.append(f"  {name}: {shlex.join(mask_argv(argv))}" +
                     (f"   env {' '.join(f'{k}={v}' for k, v in mask(extra).items())}" if extra else ""))
    for pair in pairs(spec, at):
        lines.append(f"  pair {pair.b} vs {pair.a}, about {', '.join(pair.about) or '-'}"
                     + (f": NOT apples to apples, {pair.extra_text}" if pair.extra else ""))
    return lines

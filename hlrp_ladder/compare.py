"""The variant matrix: what each variant runs, how two of them differ, and the deltas between them with the
noise band their repeats give. Pure: no I/O, no processes.

A delta is called ``faster``/``slower`` (``more memory``/``less memory``, ``higher loss``/``lower loss``) only
when its 95 % Welch interval — the difference of the means, with each side's own variance — leaves out zero;
otherwise it is ``within noise``. With one run per variant there is no variance to estimate: the delta is shown,
and the verdict says ``no noise band`` rather than pretend.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

from hlrp_ladder.records import MARKER_ENV, METRICS_ENV, Outcome, ProbeRecord

ENV_PREFIX = "env."
# two-sided 95 % quantiles of Student's t, df 1..30 (a textbook table: no SciPy for one number)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
METRICS = {  # name -> (how to read it off a record, the words for up / down)
    "samples_per_s": (lambda r: r.metrics.samples_per_s, ("faster", "slower")),
    "step_per_s": (lambda r: r.metrics.step_per_s, ("faster", "slower")),
    "peak_bytes": (lambda r: r.peak_bytes, ("more memory", "less memory")),
    "val_loss": (lambda r: r.metrics.val_loss, ("higher loss", "lower loss")),
}


def t975(df: float) -> float:
    if df <= 1:
        return T975[0]
    if df >= 30:
        return 2.042 - (2.042 - 1.960) * min(1.0, (df - 30) / 90)
    lo = int(df)
    return T975[lo - 1] + (T975[lo] - T975[lo - 1]) * (df - lo)


def split(variant: dict) -> tuple[dict, dict]:
    """A variant's overrides and its environment (``env.NAME`` keys)."""
    overrides = {k: v for k, v in variant.items() if not k.startswith(ENV_PREFIX)}
    env = {k[len(ENV_PREFIX):]: "" if v is None else str(v) for k, v in variant.items() if k.startswith(ENV_PREFIX)}
    return overrides, env


def effective(spec, name: str, batch_size: int) -> tuple[list[str], dict[str, str]]:
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
    from hlrp_ladder.spec import _render

    return spec.base_command() + [f"{k}={_render(v)}" for k, v in items.items()], {**spec.env, **env}


def settings(spec, name: str, batch_size: int) -> dict[str, str]:
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


def differences(spec, a: str, b: str, batch_size: int) -> list[str]:
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


def pairs(spec, batch_size: int) -> list[PairSpec]:
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


def delta(a_values: list[float], b_values: list[float], words: tuple[str, str]) -> Delta:
    a_values = [v for v in a_values if v is not None]
    b_values = [v for v in b_values if v is not None]
    if not a_values or not b_values:
        return Delta(None, None, None, None, None, None, "no data", (len(a_values), len(b_values)))
    ma, mb = statistics.fmean(a_values), statistics.fmean(b_values)
    d = mb - ma
    pct = None if ma == 0 else 100 * d / ma
    n = (len(a_values), len(b_values))
    if min(n) < 2:
        return Delta(ma, mb, d, pct, None, None, "no noise band", n)
    va, vb = statistics.variance(a_values) / n[0], statistics.variance(b_values) / n[1]
    se = math.sqrt(va + vb)
    if se == 0:
        low = high = d
    else:
        df = (va + vb) ** 2 / ((va ** 2) / (n[0] - 1) + (vb ** 2) / (n[1] - 1)) if (va or vb) else 1
        half = t975(df) * se
        low, high = d - half, d + half
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

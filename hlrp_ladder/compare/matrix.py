"""The variant matrix: what each variant runs, how two of them differ, and the deltas between them with the
noise band their repeats give. Pure: no I/O, no processes.

A delta is called ``faster``/``slower`` (``more memory``/``less memory``, ``higher loss``/``lower loss``) only
when its Welch interval — the difference of the means, with each side's own variance — leaves out zero;
otherwise it is ``within noise``. With one run per variant there is no variance to estimate: the delta is shown,
and the verdict says ``no noise band`` rather than pretend; a side whose repeats came out identical measured no
noise, and no verdict is drawn from it either.

Runs are the unit of replication (the between-run variance is what a person pays for); a run's throughput is its
steady-state rate (``probe.metrics.steady_rate``). Beside each delta stands the effect the runs so far can detect
(at the interval's confidence and 80 % power) and the runs a side a target effect would need. With
``target_effect`` compare adds rounds until each pair is decided; every round is another look at the data, so
the interval's confidence is Bonferroni-corrected for all the looks the spec allows (95 % family-wise).
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
ALPHA, POWER = 0.05, 0.80     # family-wise error of every verdict; the power the detectable effect is quoted at
MAX_RUNS_NEEDED = 100          # "runs needed" is not searched past this


def steps_per_s(rec: ProbeRecord) -> Optional[float]:
    """A run's throughput: its steady-state step/s, else the median the trainer reported."""
    return rec.metrics.steady_step_per_s or rec.metrics.step_per_s


def samples_per_s(rec: ProbeRecord) -> Optional[float]:
    steady = rec.metrics.steady_step_per_s
    return steady * rec.batch_size if steady else rec.metrics.samples_per_s


def working_set(rec: ProbeRecord) -> Optional[int]:
    """A run's memory as the ladder judges it: the working set (charge less inactive file cache) where there
    was a cgroup to read it from, else the best peak there is."""
    ws = rec.peaks.working_set_sampled_bytes
    return ws if ws is not None else rec.peak_bytes


METRICS = {  # name -> (how to read it off a record, the words for up / down)
    "samples_per_s": (samples_per_s, ("faster", "slower")),
    "step_per_s": (steps_per_s, ("faster", "slower")),
    "working_set_bytes": (working_set, ("more memory", "less memory")),
    "val_loss": (lambda r: r.metrics.val_loss, ("higher loss", "lower loss")),
}
DECIDES = "samples_per_s"      # the metric target_effect is about (throughput)


def looks(cmp) -> int:
    """How many times a compare may look at the data: once, or once per round it may add."""
    return 1 if cmp.target_effect is None else cmp.most_repeats() - cmp.repeats + 1


def confidence(cmp) -> float:
    """Each interval's confidence: 95 %, Bonferroni-corrected over the looks (1 - 0.05 / looks)."""
    return 1 - ALPHA / looks(cmp)


def split(variant: dict) -> tuple[dict, dict]:
    """A variant's overrides and its environment (``env.NAME`` keys)."""
    overrides = {k: v for k, v in variant.items() if not k.startswith(ENV_PREFIX)}
    env = {k[len(ENV_PREFIX):]: "" if v is None else str(v) for k, v in variant.items() if k.startswith(ENV_PREFIX)}
    return overrides, env


def effective(spec: Spec, name: str, batch_size: int, seed: Optional[int] = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment a variant's runs get: the spec's overrides, the compare recipe, the run's
    ``seed`` under ``compare.seed_key`` (when both are set), the variant's own overrides (they win), the batch
    size."""
    cmp = spec.compare
    overrides, env = split(cmp.variants[name])
    keys = spec.probe.keys
    items = dict(spec.overrides)
    for key, value in ((keys.max_steps, cmp.max_steps), (keys.check_interval, cmp.check_interval),
                       (keys.limit_batches, cmp.limit_batches), (cmp.seed_key, seed)):
        if key and value is not None:
            items[key] = value
    items.update(overrides)
    items[spec.batch_size_key] = batch_size
    return argvs.argv(spec.base_command(), items, spec.bools()), {**spec.env, **env}


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
    low_pct: Optional[float]               # the Welch interval of delta, in % of a (None: no band)
    high_pct: Optional[float]
    verdict: str                           # faster | slower | ... | within noise | no noise band | identical
                                           # repeats | no data
    n: tuple[int, int] = (0, 0)
    mde_pct: Optional[float] = None        # the smallest effect (in % of a) these runs detect at POWER
    runs_needed: Optional[int] = None      # runs a side to detect target_pct at POWER (None: over 100, or no target)
    confidence: float = 1 - ALPHA


def _spread(values: list[float]) -> float:
    return statistics.variance(values) if len(values) > 1 else 0.0


def mde_pct(var_a: float, var_b: float, n_a: int, n_b: int, mean_a: float, conf: float) -> Optional[float]:
    """The smallest difference, in % of a's mean, that a two-sided Welch interval at ``conf`` excludes zero for
    with probability POWER, at these variances and runs: (t_{1-alpha/2} + t_{power}) x se, at Welch's df."""
    if not mean_a or n_a < 2 or n_b < 2:
        return None
    se, df = stats.welch_se_df(var_a, var_b, n_a, n_b)
    if se == 0:
        return None
    t = stats.t_quantile(1 - (1 - conf) / 2, df) + stats.t_quantile(POWER, df)
    return 100 * t * se / abs(mean_a)


def runs_needed(var_a: float, var_b: float, mean_a: float, conf: float, target_pct: float) -> Optional[int]:
    """Runs a side for ``target_pct`` to be detectable (``mde_pct`` <= target) at these variances; None past
    MAX_RUNS_NEEDED."""
    def fits(n: int) -> bool:
        mde = mde_pct(var_a, var_b, n, n, mean_a, conf)
        return mde is not None and mde <= target_pct

    if not fits(MAX_RUNS_NEEDED):
        return None
    lo, hi = 2, MAX_RUNS_NEEDED  # the detectable effect shrinks with n: bisect for the first n that fits
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo


def delta(a_values: list[Optional[float]], b_values: list[Optional[float]], words: tuple[str, str],
          conf: float = 1 - ALPHA, target_pct: Optional[float] = None) -> Delta:
    """b's mean against a's, with the Welch interval of the difference at ``conf`` (``stats.welch_interval``,
    exact Student-t quantiles), the verdict it allows, the effect it can detect and the runs ``target_pct``
    needs."""
    a_values = [v for v in a_values if v is not None]
    b_values = [v for v in b_values if v is not None]
    n = (len(a_values), len(b_values))
    if not a_values or not b_values:
        return Delta(None, None, None, None, None, None, "no data", n, confidence=conf)
    ma, mb = statistics.fmean(a_values), statistics.fmean(b_values)
    d = mb - ma
    pct = None if ma == 0 else 100 * d / abs(ma)  # of a's size: a negative mean must not flip the band
    band = stats.welch_interval(a_values, b_values, conf)
    if band is None:
        return Delta(ma, mb, d, pct, None, None, "no noise band", n, confidence=conf)
    va, vb = _spread(a_values), _spread(b_values)
    if va == 0 or vb == 0:  # a side's repeats came out identical: its noise is unknown, not zero
        return Delta(ma, mb, d, pct, None, None, "identical repeats", n, confidence=conf)
    verdict = words[0] if band.low > 0 else words[1] if band.high < 0 else "within noise"
    scale = (lambda x: 100 * x / abs(ma)) if ma else (lambda x: None)
    return Delta(ma, mb, d, pct, scale(band.low), scale(band.high), verdict, n,
                 mde_pct(va, vb, n[0], n[1], ma, conf),
                 None if target_pct is None else runs_needed(va, vb, ma, conf, target_pct), conf)


def decision(d: Delta, target_pct: float) -> str:
    """Where a pair stands on the target: decided (the band leaves out zero), equivalent (the band lies within
    ±target), undecided (more runs may tell), or final (no data, or identical repeats: more runs of the same
    cannot tell)."""
    if d.verdict in ("no data", "identical repeats"):
        return "final"
    if d.low_pct is None:
        return "undecided"
    if d.low_pct > 0 or d.high_pct < 0:
        return "decided"
    if -target_pct < d.low_pct and d.high_pct < target_pct:
        return "equivalent"
    return "undecided"


def decision_text(d: Delta, target_pct: Optional[float], most: int, seeded: bool = False) -> str:
    """The sentence for a pair's throughput: 'faster by 7.9 % [5.2, 10.6]', 'within ±5 %: no difference that
    large', or why it is not decided (``seeded``: compare.seed_key already varies each repeat's seed)."""
    if d.verdict == "identical repeats":
        if seeded:
            return "identical repeats on a side although each had its own seed: no noise measured, no verdict"
        return ("identical repeats: the trainer is deterministic; vary the seed to measure noise "
                "(compare.seed_key)")
    if d.verdict in ("no data", "no noise band"):
        return d.verdict
    if target_pct is None:
        return d.verdict
    state = decision(d, target_pct)
    if state == "decided":
        return f"{d.verdict} by {abs(d.delta_pct):.1f} % [{d.low_pct:+.1f}, {d.high_pct:+.1f}]"
    if state == "equivalent":
        return f"within ±{target_pct:g} %: no difference that large"
    detect = f"±{d.mde_pct:.1f} % detectable" if d.mde_pct is not None else "no detectable effect known"
    need = f"{target_pct:g} % needs about {d.runs_needed} runs a side" if d.runs_needed else \
        f"{target_pct:g} % needs more than {MAX_RUNS_NEEDED} runs a side"
    return f"undecided after {min(d.n)} runs a side (max_repeats {most}): {detect}; {need}"


def pair_metrics(records_a: list[ProbeRecord], records_b: list[ProbeRecord], conf: float = 1 - ALPHA,
                 target_pct: Optional[float] = None) -> dict[str, Delta]:
    """Every metric's delta between the passing runs of two variants. Throughput is compared in one measure:
    the steady-state rate when every run has one, else the rate each trainer reported (never a mix)."""
    ok_a = [r for r in records_a if r.outcome == Outcome.ok]
    ok_b = [r for r in records_b if r.outcome == Outcome.ok]
    steady = all(r.metrics.steady_step_per_s for r in ok_a + ok_b)
    readers = dict(METRICS)
    if not steady:
        readers["samples_per_s"] = (lambda r: r.metrics.samples_per_s, METRICS["samples_per_s"][1])
        readers["step_per_s"] = (lambda r: r.metrics.step_per_s, METRICS["step_per_s"][1])
    return {name: delta([read(r) for r in ok_a], [read(r) for r in ok_b], words, conf, target_pct)
            for name, (read, words) in readers.items()}


def more_rounds(spec: Spec, batch_size: int, runs_of) -> bool:
    """Whether compare should add a round: a target is set, some pair's throughput is still undecided, and the
    runs a variant has are fewer than max_repeats. ``runs_of(variant)`` gives a variant's records."""
    cmp = spec.compare
    target = cmp.target_pct()
    if target is None:
        return False
    most, conf = cmp.most_repeats(), confidence(cmp)
    for pair in pairs(spec, batch_size):
        runs_a, runs_b = runs_of(pair.a), runs_of(pair.b)
        if max(len(runs_a), len(runs_b)) >= most:
            continue
        d = pair_metrics(runs_a, runs_b, conf, target)[DECIDES]
        if decision(d, target) == "undecided":
            return True
    return False


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
        if cmp.batch_size == "pick":  # no batch size yet: say so, rather than show a 0 the trainer never gets
            argv = [f"{spec.batch_size_key}=<pick>" if a == f"{spec.batch_size_key}=0" else a for a in argv]
        extra = {k: v for k, v in env.items() if k not in spec.env}
        lines.append(f"  {name}: {shlex.join(mask_argv(argv))}" +
                     (f"   env {' '.join(f'{k}={v}' for k, v in mask(extra).items())}" if extra else ""))
    for pair in pairs(spec, at):
        lines.append(f"  pair {pair.b} vs {pair.a}, about {', '.join(pair.about) or '-'}"
                     + (f": NOT apples to apples, {pair.extra_text}" if pair.extra else ""))
    return lines

"""A compare run's report: the seed's table (one row per run), one row per pair with every metric's delta and
its noise band, the flags of pairs that differ in more than they are about, and a plot. md (with a PNG), json
(for scripts: its shape is in docs/compare.md) and csv."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from hlrp_ladder.compare import matrix as compare
from hlrp_ladder.records import ProbeRecord
from hlrp_ladder.run.store import RunStore
from hlrp_ladder.spec.model import Spec
from hlrp_ladder.util.files import write_report
from hlrp_ladder.util.sizes import GIB, gib

LABELS = {"samples_per_s": "samples/s", "step_per_s": "step/s", "working_set_bytes": "working set",
          "val_loss": "final val loss"}

if TYPE_CHECKING:  # pandas is imported where a report is made: other commands need not pay ~0.15 s for it
    import pandas as pd


@dataclass
class CompareView:
    store: RunStore
    state: dict
    spec: Spec
    records: list[ProbeRecord]
    warnings: list[str]
    batch_size: int
    warmup: Optional[ProbeRecord] = None     # the run before the matrix, not counted

    @property
    def title(self) -> str:
        return f"{self.spec.name}-{self.store.root.name}"

    def runs_of(self, variant: str) -> list[ProbeRecord]:
        return sorted((r for r in self.records if r.variant == variant), key=lambda r: r.repeat)


def load(store: RunStore) -> CompareView:
    spec = store.snapshot()
    loaded = store.load()
    state = store.state()
    warmup = [r for r in loaded.records if r.repeat == 0]
    view = CompareView(store, state, spec, [r for r in loaded.records if r.repeat > 0], loaded.warnings,
                       int(state["batch_size"]))
    view.warmup = warmup[0] if warmup else None
    return view


def _overrides_text(view: CompareView, variant: str) -> str:
    overrides, env = compare.split(view.spec.compare.variants[variant])
    items = [f"{k}={v}" for k, v in overrides.items()] + [f"env {k}={v}" for k, v in env.items()]
    return ", ".join(items) or "(the spec as it is)"


def runs_frame(view: CompareView) -> pd.DataFrame:
    import pandas as pd

    steps = sorted({p.step for r in view.records for p in r.metrics.val_points})
    rows = []
    for variant in view.spec.compare.variants:
        for rec in view.runs_of(variant):
            losses = {p.step: p.val_loss for p in rec.metrics.val_points}
            rows.append({
                "variant": variant, "run": f"r{rec.repeat}", "overrides": _overrides_text(view, variant),
                "outcome": rec.outcome.value, "s": round(rec.duration_s, 1),
                "working set GiB": round(compare.working_set(rec) / GIB, 3) if compare.working_set(rec) else None,
                "charge GiB": None if rec.peaks.kernel_bytes is None else round(rec.peaks.kernel_bytes / GIB, 3),
                "sampled rss GiB": round(rec.peaks.sampled_rss_bytes / GIB, 3) if rec.peaks.sampled_rss_bytes
                else None,
                "step/s": compare.steps_per_s(rec), "samples/s": compare.samples_per_s(rec),
                "steady windows": rec.metrics.steady_windows or None,
                "within-run CV %": None if rec.metrics.steady_cv is None else round(100 * rec.metrics.steady_cv, 1),
                **{f"val loss @{s}": None if losses.get(s) is None else round(losses[s], 4) for s in steps},
                "artifact": rec.metrics.artifact})
    return pd.DataFrame(rows)


def pair_results(view: CompareView) -> list[dict]:
    cmp = view.spec.compare
    target, conf = cmp.target_pct(), compare.confidence(cmp)
    out = []
    for pair in compare.pairs(view.spec, view.batch_size):
        metrics = compare.pair_metrics(view.runs_of(pair.a), view.runs_of(pair.b), conf, target)
        main = metrics[compare.DECIDES]
        out.append({"a": pair.a, "b": pair.b, "about": pair.about, "extra_differences": pair.extra,
                    "flag": pair.extra_text,
                    "decided": None if target is None else compare.decision(main, target),
                    "throughput": compare.decision_text(main, target, cmp.most_repeats(), cmp.seed_key is not None),
                    "metrics": {name: {k: v for k, v in asdict(d).items() if k != "n"} | {"runs": list(d.n)}
                                for name, d in metrics.items()}})
    return out


def _cell(name: str, m: dict, target: float | None = None) -> str:
    if m["delta"] is None:
        return "no data"
    memory = name == "working_set_bytes"
    delta = f"{'+' if m['delta'] >= 0 else '-'}{gib(abs(m['delta']))}" if memory else f"{m['delta']:+.3g}"
    pct = "" if m["delta_pct"] is None else f" ({m['delta_pct']:+.1f} %"
    band = "" if m["low_pct"] is None else \
        f", {100 * m['confidence']:.4g} % [{m['low_pct']:+.1f}, {m['high_pct']:+.1f}] %"
    detect = "" if m["mde_pct"] is None else f"; ±{m['mde_pct']:.1f} % detectable"
    if detect and target is not None:
        detect += (f"; {target:g} % needs about {m['runs_needed']} runs a side" if m["runs_needed"] else
                   f"; {target:g} % needs more than 100 runs a side")
    return f"{delta}{pct}{band}{')' if pct else ''} **{m['verdict']}**{detect}"


def pairs_frame(view: CompareView, results: list[dict]) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for res in results:
        rows.append({"pair": f"{res['b']} vs {res['a']}", "about": ", ".join(res["about"]) or "-",
                     "throughput": res["throughput"],
                     **{LABELS[name]: _cell(name, m, view.spec.compare.target_pct())
                        for name, m in res["metrics"].items()},
                     "apples to apples": res["flag"] or "yes"})
    return pd.DataFrame(rows)


def plot(view: CompareView, path: Path) -> Optional[Path]:
    """samples/s and peak memory per variant (every run a dot, the mean a bar), and val loss over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(view.spec.compare.variants)
    if not view.records:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    for ax, (what, read, scale, unit) in zip(axes[:2], (
            ("samples/s", compare.samples_per_s, 1, ""), ("working set", compare.working_set, GIB, " (GiB)"))):
        for i, variant in enumerate(variants):
            values = [read(r) / scale for r in view.runs_of(variant) if r.outcome.value == "ok" and read(r)]
            if values:
                ax.bar(i, sum(values) / len(values), color="#cfd8e3", width=0.6)
                ax.plot([i] * len(values), values, "o", color="#1f4e79")
        ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{what}{unit}: bars the mean, dots each run", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[2]
    for variant in variants:
        for rec in view.runs_of(variant):
            pts = [(p.step, p.val_loss) for p in rec.metrics.val_points if p.val_loss is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{variant} r{rec.repeat}", linewidth=1.2)
    ax.set_title("val loss over steps", fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(f"{view.title}: {len(variants)} variants at bs={view.batch_size}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rounds(view: CompareView) -> int:
    return max([0] + [r.repeat for r in view.records])


def _correction(cmp) -> str:
    n = compare.looks(cmp)
    return "none (one look)" if n == 1 else f"Bonferroni over {n} looks (one per round allowed)"


def as_json(view: CompareView, results: list[dict]) -> str:
    variants = []
    for name, items in view.spec.compare.variants.items():
        overrides, env = compare.split(items)
        variants.append({"name": name, "overrides": overrides, "env": env,
                         "argv": compare.effective(view.spec, name, view.batch_size)[0]})
    return json.dumps({
        "name": view.spec.name, "run": str(view.store.root), "status": view.state.get("status"),
        "batch_size": view.batch_size, "variants": variants, "rounds": _rounds(view),
        "target_effect_pct": view.spec.compare.target_pct(), "confidence": compare.confidence(view.spec.compare),
        "correction": _correction(view.spec.compare), "seed_key": view.spec.compare.seed_key,
        "runs": [{**r.model_dump(mode="json"), "duration_s": round(r.duration_s, 3)} for r in view.records],
        "pairs": [{k: v for k, v in res.items() if k != "flag"} for res in results], "warnings": view.warnings,
    }, indent=2)


def markdown(view: CompareView, results: list[dict], png: Optional[str], command: str) -> str:
    state = view.state
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.get("created", 0)))
    cmp = view.spec.compare
    conf = compare.confidence(cmp)
    noise = (f"Runs are the unit of replication; a run's throughput is its steady-state rate (the windows between "
             f"train events, start-up and validations left out; its within-run spread is the CV column). Each delta "
             f"is the mean of the b side's passing runs minus the a side's, in % of a, with the {100 * conf:.4g} % "
             f"Welch interval of that difference (each side's own variance, exact Student-t quantiles): "
             f"**faster/slower** (more/less memory, higher/lower loss) only when the interval leaves out zero, else "
             f"**within noise**. Beside it, the effect these runs detect at {100 * compare.POWER:.0f} % power.")
    if compare.looks(cmp) > 1:
        noise += (f" With `target_effect: {cmp.target_effect}` compare added rounds (one more run of every variant) "
                  f"while a pair's throughput was undecided, up to {cmp.most_repeats()} runs a side: each round is "
                  f"another look at the data, so every interval is Bonferroni-corrected for the "
                  f"{compare.looks(cmp)} looks allowed (95 % family-wise). {_rounds(view)} round(s) were run.")
    walls = sorted({r.variant for r in view.records if r.metrics.rate_source == "wall between metric lines"})
    if walls:
        noise += (f" Runs of {', '.join(walls)} had neither a step rate nor a step time to read: their step/s is the "
                  f"steps the trainer printed over the seconds between those lines (validations included).")
    if cmp.repeats < 2 and compare.looks(cmp) == 1:
        noise += " With `repeats: 1` there is no variance to estimate: no noise band exists, and the verdicts say so."
    df, pf = runs_frame(view), pairs_frame(view, results)
    flags = [f"- **{r['b']} vs {r['a']}** is not apples to apples: {r['flag']}." for r in results if r["flag"]]
    lines = [
        f"# Compare report: {view.spec.name} / {view.store.root.name}", "",
        f"Produced by `{' '.join(state.get('command') or ['hlrp-ladder', 'compare', '?'])}` (started {created}, "
        f"status {state.get('status', '?')}) and `{command}`: {len(cmp.variants)} variants x {_rounds(view)} runs at "
        f"bs={view.batch_size}, {cmp.max_steps} steps, validation every {cmp.check_interval}"
        + (f" over {cmp.limit_batches} batches" if cmp.limit_batches else " (the trainer's own batch limit)") + "."
        + (f" A warm-up run of {view.warmup.variant} came first, not counted ({view.warmup.outcome.value}, "
           f"{view.warmup.duration_s:.0f} s): the first runs on a cold page cache are charged the libraries and "
           f"data they read in." if view.warmup is not None else ""),
        "", "## Runs", "",
        df.astype(object).where(df.notna(), None).to_markdown(index=False, missingval="-") if not df.empty
        else "_no finished runs_", "", "## Pairs", "", noise, "",
        pf.to_markdown(index=False) if not pf.empty else "_no pairs_", ""]
    if flags:
        lines += flags + [""]
    if view.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in view.warnings] + [""]
    if png:
        lines += [f"![samples/s, peak memory and val loss per variant]({png})", ""]
    return "\n".join(lines)


def write(view: CompareView, out_dir: Path, fmt: str, command: str) -> Path:
    """reports/<name>-<run-id>-compare.md (with its PNG), .json or .csv."""
    results = pair_results(view)

    def md() -> str:
        png = plot(view, out_dir / f"{view.title}.png")
        return markdown(view, results, png.name if png else None, command)

    return write_report(out_dir, view.title, fmt, {"json": lambda: as_json(view, results) + "\n",
                                                   "csv": lambda: runs_frame(view).to_csv(index=False), "md": md})


def rich_table(view: CompareView):
    from rich.table import Table

    pf = pairs_frame(view, pair_results(view))
    table = Table(title=f"{view.title}: {len(view.spec.compare.variants)} variants at bs={view.batch_size}")
    for column in pf.columns:
        table.add_column(str(column), overflow="fold")
    for _, row in pf.iterrows():
        table.add_row(*[str(v).replace("**", "") for v in row.tolist()])
    return table

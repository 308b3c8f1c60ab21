"""The command line: parses arguments and delegates. No logic lives here."""
from __future__ import annotations

import functools
import json
import shlex
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from hlrp_ladder import executors, overnight, preflight
from hlrp_ladder import report as ladder_report
from hlrp_ladder import search
from hlrp_ladder.compare import report as compare_report
from hlrp_ladder.compare.matrix import summary_lines as compare_lines
from hlrp_ladder.compare.runner import run_compare
from hlrp_ladder.run.ladder import run_ladder
from hlrp_ladder.run.live import LiveView
from hlrp_ladder.run.store import RunStore, StoreError
from hlrp_ladder.spec import Spec, SpecError, load_spec, load_yaml, masked_keys, parse_spec
from hlrp_ladder.spec.summary import summary_lines
from hlrp_ladder.util.files import as_disk_full, no_space

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find the largest batch size a training run survives in host RAM and GPU memory, before the long run.")
out = Console(soft_wrap=True)  # a message is one line, however long: scripts grep it
err = Console(stderr=True, soft_wrap=True)


def user_errors(func):
    """A user mistake is one line on stderr and exit 2, never a traceback."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (SpecError, StoreError) as exc:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(search.EXIT_USAGE) from None
        except OSError as exc:  # a full disk anywhere: one line naming the path and the free space, no traceback
            if not no_space(exc):
                raise
            err.print(f"error: {as_disk_full(exc)}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(search.EXIT_NO_SPACE) from None
    return wrapper


class Format(str, Enum):
    md = "md"
    json = "json"
    csv = "csv"


def _preflight(spec: Spec, spec_path: Path, skip: bool, variants: bool = False) -> None:
    """Before run, compare and launch-overnight: stop on a blocker, show warnings, say how long it took."""
    if skip:
        err.print("preflight: skipped (--skip-preflight)", highlight=False)
        return

    start = time.monotonic()
    findings = preflight.findings(spec, str(spec_path), variants)
    problems = [f for f in findings if f.status in ("fail", "warn")]
    if problems:
        err.print(preflight.table(problems, only_problems=True))
    blockers = [f for f in findings if f.blocking]
    if blockers:
        err.print(f"preflight: {len(blockers)} blocker(s) found in {time.monotonic() - start:.1f} s; nothing was "
                  f"started (hlrp-ladder preflight {spec_path} shows every check; --skip-preflight to override)",
                  highlight=False)
        raise typer.Exit(search.EXIT_BLOCKED)
    err.print(f"preflight: {sum(f.status == 'ok' for f in findings)} checks ok, {len(problems)} warning(s), "
              f"{time.monotonic() - start:.1f} s", highlight=False)


def _start(runner, spec_path: Path, run_ref: Optional[str], resume: bool, skip_preflight: bool,
           compare: bool = False):
    """What `run` and `compare` share: the spec, preflight (on resume too: a shard or a dir can vanish between
    attempts), then ``runner`` (run_ladder or run_compare) with the live view, inside the delegated cgroup when
    local."""
    if run_ref is not None and not resume:
        raise StoreError(f"{run_ref}: a RUN is only taken with --resume")
    spec = load_spec(spec_path)
    if compare and spec.compare is None:
        raise SpecError(f"{spec_path}: compare: the spec has no compare section (batch_size, variants, ...)")
    problem = preflight.gpu_cap_error(spec)  # a device here, so known only here: still the spec's mistake
    if problem:
        raise SpecError(f"{spec_path}: {problem}")
    # Inside the executor's session (a delegated cgroup v2 gets its memory controller enabled), so preflight sees
    # the cap the run will have.
    with executors.create(spec).session():
        _preflight(spec, spec_path, skip_preflight, variants=compare)
        return runner(spec, LiveView(err), (run_ref or "latest") if resume else None, ["hlrp-ladder", *sys.argv[1:]])


@app.command()
@user_errors
def run(spec_path: Path = typer.Argument(..., metavar="SPEC", help="ladder spec (YAML)"),
        run_ref: Optional[str] = typer.Argument(None, metavar="[RUN]", help="with --resume: the run to continue "
                                                "(folder, NAME/RUN-ID or RUN-ID; default: the spec's latest)"),
        resume: bool = typer.Option(False, "--resume", help="continue a run: finished rungs are kept"),
        skip_preflight: bool = typer.Option(False, "--skip-preflight", help="start without the preflight checks")):
    """Run the ladder: one probe per rung, stop at the first failure, keep the last stable batch size.

    hlrp-ladder run SPEC --resume [RUN] continues a run that was interrupted or killed."""
    result = _start(run_ladder, spec_path, run_ref, resume, skip_preflight)
    verdict = result.verdict
    if verdict.exit_code == search.EXIT_PICK:
        out.print(f"[bold green]pick: bs={verdict.pick}[/] — {verdict.reason}", highlight=False)
    else:
        label = {search.EXIT_NO_STABLE: "no pick", search.EXIT_INCONCLUSIVE: "inconclusive"}.get(verdict.exit_code,
                                                                                              "stopped")
        err.print(f"[bold red]{label}[/] — {verdict.reason}", highlight=False)
    out.print(f"run: {result.store.root}  (report: hlrp-ladder report {result.store.root})", highlight=False)
    raise typer.Exit(verdict.exit_code)


@app.command()
@user_errors
def compare(spec_path: Path = typer.Argument(..., metavar="SPEC", help="a spec with a compare section"),
            run_ref: Optional[str] = typer.Argument(None, metavar="[RUN]", help="with --resume: the compare run to "
                                                    "continue (default: the spec's latest)"),
            resume: bool = typer.Option(False, "--resume", help="continue a compare run: finished runs are kept"),
            skip_preflight: bool = typer.Option(False, "--skip-preflight")):
    """Run the variant matrix (compare section: every variant x repeat at one batch size) through the spec's
    executor; hlrp-ladder report then gives the table, the pairs with their noise bands, and the plot."""
    result = _start(run_compare, spec_path, run_ref, resume, skip_preflight, compare=True)
    label = "stopped" if result.verdict.exit_code else "done"
    (err if result.verdict.exit_code else out).print(f"{label}: {result.verdict.reason}", highlight=False,
                                                     markup=False)
    out.print(f"run: {result.store.root}  (report: hlrp-ladder report {result.store.root})", highlight=False)
    raise typer.Exit(result.verdict.exit_code)


@app.command()
@user_errors
def validate(spec_path: Path = typer.Argument(..., metavar="SPEC")):
    """Check a spec and print the probes it would run (argv, env diff)."""
    spec = load_spec(spec_path)
    for line in summary_lines(spec, str(spec_path), executors.create(spec).usable_memory()) + compare_lines(spec):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command("preflight")
@user_errors
def preflight_cmd(spec_path: Path = typer.Argument(..., metavar="SPEC"),
                  as_json: bool = typer.Option(False, "--json", help="the findings as JSON")):
    """Find every environment blocker at once (dirs, datasets, network, files, memory, launcher) in seconds."""
    spec = load_spec(spec_path)
    start = time.monotonic()
    findings = preflight.findings(spec, str(spec_path))
    blockers = sum(f.blocking for f in findings)
    if as_json:
        print(json.dumps([f.__dict__ for f in findings], indent=2))
    else:
        Console(width=max(out.width, 150) if not out.is_terminal else None).print(preflight.table(findings))
        out.print(f"{'BLOCKED' if blockers else 'ready'}: {blockers} blocker(s), "
                  f"{sum(f.status == 'warn' for f in findings)} warning(s), {time.monotonic() - start:.1f} s",
                  highlight=False)
    raise typer.Exit(search.EXIT_BLOCKED if blockers else 0)


@app.command()
def schema():
    """Print the spec's JSON Schema (for editor completion)."""
    print(json.dumps(Spec.model_json_schema(), indent=2))


@app.command()
@user_errors
def report(run: Optional[str] = typer.Argument(None, help="run folder, NAME/RUN-ID or RUN-ID (default: latest)"),
           fmt: Format = typer.Option(Format.md, "--format", help="md writes markdown + PNG; json/csv also print"),
           runs_dir: Path = typer.Option(Path("runs"), help="where runs are (default ./runs)"),
           spec_path: Optional[Path] = typer.Option(None, "--spec", help="take runs_dir and name from a spec"),
           out_dir: Path = typer.Option(Path("reports"), "--out", help="where reports are written"),
           of_compare: bool = typer.Option(False, "--compare", help="with --spec: its latest compare run (default: "
                                           "its latest ladder run)")):
    """Write reports/<name>-<run-id>.md (or .json/.csv) for a run (a ladder or a compare matrix) and print its
    table."""
    name, kind = None, None  # without --spec: the latest run of either kind (--compare: of a compare)
    if spec_path is not None:
        spec = load_spec(spec_path)
        runs_dir, name = Path(spec.runs_dir), spec.name
        kind = "ladder"  # a spec names both kinds of run: its ladder unless --compare
    store = RunStore.find(runs_dir, run, name, kind="compare" if of_compare else kind)
    reports = compare_report if store.kind == "compare" else ladder_report
    view = compare_report.load(store) if store.kind == "compare" else ladder_report.load_run(store)
    path = reports.write(view, out_dir, fmt.value, shlex.join(["hlrp-ladder", "report", *sys.argv[2:]]))
    if fmt == Format.md:
        # Off a terminal rich assumes 80 columns, which folds every cell; a report table wants its width.
        Console(width=max(out.width, 150) if not out.is_terminal else None).print(reports.rich_table(view))
        for warning in view.warnings:
            err.print(f"warning: {warning}", markup=False, highlight=False)
    else:
        print(path.read_text(), end="")
    err.print(f"wrote {path}", highlight=False)


def _run_and_spec(run: Optional[str], runs_dir: Path, spec_path: Optional[Path]):
    """The run (default: the latest) and its spec: the given file, or the run's snapshot."""
    name = None
    spec = None
    if spec_path is not None:
        spec = load_spec(spec_path)
        runs_dir, name = Path(spec.runs_dir), spec.name
    store = RunStore.find(runs_dir, run, name, kind="ladder")
    if spec is None:
        snapshot = store.root / "spec.yaml"
        text = snapshot.read_text()
        hidden = masked_keys(load_yaml(text) or {})
        if hidden:
            raise StoreError(f"{snapshot}: {', '.join(hidden)} masked in the snapshot; pass the spec with --spec SPEC")
        spec = parse_spec(text, str(snapshot))
    return store, spec


@app.command("launch-overnight")
@user_errors
def launch_overnight(run: Optional[str] = typer.Argument(None, help="the ladder run (default: the latest)"),
                     pick: str = typer.Option(..., "--pick", help="'stable' (the run's pick) or a batch size"),
                     dry_run: bool = typer.Option(False, "--dry-run", help="print what would start; start nothing"),
                     force: bool = typer.Option(False, "--force", help="launch an unconfirmed pick, or replace a "
                                                "live long run"),
                     spec_path: Optional[Path] = typer.Option(None, "--spec", help="the spec file (default: the run's "
                                                              "snapshot)"),
                     runs_dir: Path = typer.Option(Path("runs"), help="where runs are"),
                     skip_preflight: bool = typer.Option(False, "--skip-preflight")):
    """Start the long run with the pick, detached (tmux when installed), under the same memory monitor."""
    store, spec = _run_and_spec(run, runs_dir, spec_path)
    executor = executors.create(spec)
    launch = overnight.plan_launch(spec, store, executor, pick, force)
    if not dry_run:
        overnight.refuse_if_live(store, force)  # before the plan is printed: a refusal is one line
    for line in overnight.launch_lines(launch):
        out.print(line, highlight=False, markup=False)
    if dry_run:
        out.print("dry run: nothing started", highlight=False)
        return
    _preflight(spec, spec_path or store.root / "spec.yaml", skip_preflight)
    started = overnight.start(store, executor, launch, force)
    out.print(f"started: {started}; watch: {launch.watch}; hlrp-ladder status {store.root}", highlight=False,
              markup=False)


@app.command()
@user_errors
def status(run: Optional[str] = typer.Argument(None, help="the ladder run (default: the latest)"),
           as_json: bool = typer.Option(False, "--json", help="for scripts"),
           runs_dir: Path = typer.Option(Path("runs"), help="where runs are"),
           spec_path: Optional[Path] = typer.Option(None, "--spec")):
    """Is the long run running or over, how much memory against the limit and the forecast, and how it ended."""
    if spec_path is not None:
        spec = load_spec(spec_path)
        runs_dir = Path(spec.runs_dir)
    store = RunStore.find(runs_dir, run, spec.name if spec_path is not None else None, kind="ladder")
    st = overnight.status_of(store)
    if as_json:
        print(json.dumps(st, indent=2))
        return
    for line in overnight.status_lines(st):
        out.print(line, highlight=False, markup=False)


@app.command("stop")
@user_errors
def stop(run: Optional[str] = typer.Argument(None, help="the ladder run (default: the latest)"),
         runs_dir: Path = typer.Option(Path("runs"), help="where runs are"),
         spec_path: Optional[Path] = typer.Option(None, "--spec")):
    """Stop the long run gently, on any executor: SIGTERM, overnight.kill_grace_s to save its state, then SIGKILL
    (on SLURM: scancel --signal=TERM to its runner); recorded as interrupted by the user."""
    if spec_path is not None:
        spec = load_spec(spec_path)
        runs_dir = Path(spec.runs_dir)
    store = RunStore.find(runs_dir, run, spec.name if spec_path is not None else None, kind="ladder")
    live = overnight.live_runs(store)
    if not live:
        out.print(f"{store.root}: no long run is running (hlrp-ladder status shows the last one)", highlight=False,
                  markup=False)
        return
    for folder, handle in live:
        grace = handle.request.stop_grace_s
        err.print(f"stopping {folder} ({handle.where()}): SIGTERM, up to {grace:g} s to save its state, then "
                  f"SIGKILL", highlight=False, markup=False)
        overnight.stop(folder)
    for line in overnight.status_lines(overnight.status_of(store)):
        out.print(line, highlight=False, markup=False)


@app.command("runs")
@user_errors
def list_runs(runs_dir: Path = typer.Option(Path("runs"), help="where runs are")):
    """List runs (ladders and compare matrices), oldest first, with their status and pick."""
    for root in RunStore.runs(runs_dir):
        store = RunStore(root)
        state = store.state()
        what = f"pick={state.get('pick')}" if store.kind == "ladder" else f"compare bs={state.get('batch_size')}"
        out.print(f"{root}  {state.get('status', '?'):11}  {what}  {state.get('reason', '')}",
                  highlight=False, markup=False, soft_wrap=True)


def main() -> None:
    app()

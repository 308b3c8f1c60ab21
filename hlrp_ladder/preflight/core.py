"""The preflight registry and runner."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from hlrp_ladder.compare.matrix import split
from hlrp_ladder.spec.model import Spec

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


@dataclass
class Finding:
    check: str
    status: str              # ok | warn | fail | skip
    detail: str
    fix: str = ""

    @property
    def blocking(self) -> bool:
        return self.status == FAIL


@dataclass
class Context:
    spec: Spec
    spec_path: str = ""
    network_timeout_s: float = 2.0
    claimed: set = field(default_factory=set)   # override keys a plugin checks for certain (not guessed at)
    notes: dict = field(default_factory=dict)   # what context hooks found (a trainer's resolved config, say)


CheckFn = Callable[[Context], Iterable[Finding]]
HookFn = Callable[[Context], None]
registry: list[tuple[str, Optional[str], CheckFn]] = []   # (name, the executor it is for or None: all, check)
hooks: list[HookFn] = []
PLUGIN_GROUP = "hlrp_ladder.preflight"
_loaded = False


def check(name: str, executor: Optional[str] = None) -> Callable[[CheckFn], CheckFn]:
    """Register a check (for specs of one ``executor`` kind only, or all). It returns (or yields) Findings; an
    exception in it becomes a failed Finding."""
    def register(fn: CheckFn) -> CheckFn:
        registry.append((name, executor, fn))
        return fn
    return register


def context_hook(fn: HookFn) -> HookFn:
    """Register a function that enriches the context before the checks run (once, in order): a plugin
    resolves its trainer's config there, and claims the keys it checks for certain."""
    hooks.append(fn)
    return fn


def load_plugins() -> list[str]:
    """Import the checks other packages register under the ``hlrp_ladder.preflight`` entry point group (the
    bundled trainer's among them), once; the ones that fail to load are returned, to be shown."""
    global _loaded
    if _loaded:
        return []
    _loaded = True
    from importlib.metadata import entry_points

    failed = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not hide the other checks
            failed.append(f"{ep.name} ({ep.value}): {type(exc).__name__}: {exc}")
    return failed


def _run_one(name: str, fn: CheckFn, ctx: Context) -> list[Finding]:
    start = time.monotonic()
    try:
        found = list(fn(ctx) or [])
    except Exception as exc:  # a broken check must not hide the others
        found = [Finding(name, FAIL, f"the check itself failed: {type(exc).__name__}: {exc}")]
    for f in found:
        f.check = f.check or name
    if time.monotonic() - start > 5:
        found.append(Finding(name, WARN, f"took {time.monotonic() - start:.1f} s"))
    return found


def run_checks(ctx: Context, executor_checks: bool = True) -> list[Finding]:
    """Every registered check, concurrently (network checks wait on timeouts, not on the CPU), in order; without
    ``executor_checks``, only those for every executor (a variant's: the cluster does not change with it)."""
    broken = [Finding("plugin", WARN, f"a preflight plugin failed to load, so its checks did not run: {error}")
              for error in ctx.notes.get("plugin_errors", [])]
    kinds = (None, ctx.spec.executor.kind) if executor_checks else (None,)
    mine = [(name, fn) for name, executor, fn in registry if executor in kinds]
    with ThreadPoolExecutor(max_workers=max(1, len(mine))) as pool:
        futures = [pool.submit(_run_one, name, fn, ctx) for name, fn in mine]
        return broken + [f for fut in futures for f in fut.result()]


def build_context(spec: Spec, spec_path: str = "") -> Context:
    """The context of a spec, after every plugin's hook has added what it knows."""
    failed = load_plugins()
    ctx = Context(spec=spec, spec_path=spec_path, network_timeout_s=spec.preflight.network_timeout_s)
    if failed:
        ctx.notes["plugin_errors"] = failed
    for hook in hooks:
        try:
            hook(ctx)
        except Exception as exc:  # noqa: BLE001 - shown as a finding, never a traceback
            ctx.notes.setdefault("plugin_errors", []).append(f"{getattr(hook, '__module__', hook)}: "
                                                            f"{type(exc).__name__}: {exc}")
    return ctx


def findings(spec: Spec, spec_path: str = "", variants: bool = True) -> list[Finding]:
    """Every check of a spec, and, for a compare matrix, of each variant's own settings too: a problem a
    variant adds (its GCS source unreachable, say) is named after it, so a blocked variant is known before the
    matrix starts rather than by a crash in its middle."""
    ctx = build_context(spec, spec_path)
    ctx.notes["compare"] = variants and spec.compare is not None   # the matrix about to run, not the ladder
    found = run_checks(ctx)
    if not variants or spec.compare is None:
        return found
    seen = {(f.check, f.status, f.detail) for f in found}
    for name, items in spec.compare.variants.items():
        overrides, env = split(items)
        variant = spec.model_copy(update={"overrides": {**spec.overrides, **overrides}, "env": {**spec.env, **env}})
        # a variant changes overrides and env, never the executor: its checks (a SLURM round-trip job) ran above
        for f in run_checks(build_context(variant, spec_path), executor_checks=False):
            if (f.check, f.status, f.detail) not in seen and f.status in (FAIL, WARN):
                found.append(Finding(f"variant {name}: {f.check}", f.status, f.detail, f.fix))
    return found


def table(findings: Iterable[Finding], only_problems: bool = False):
    """A rich table: check, status, detail, fix."""
    from rich.table import Table

    colors = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}
    t = Table(title="preflight", title_justify="left")
    for column in ("check", "status", "detail", "fix"):
        t.add_column(column, overflow="fold")
    for f in findings:
        if only_problems and f.status in (OK, SKIP):
            continue
        t.add_row(f.check, f"[{colors[f.status]}]{f.status}[/]", f.detail, f.fix)
    return t

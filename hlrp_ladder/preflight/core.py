"""The preflight registry and runner."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from hlrp_ladder.spec import Spec

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
    trainer_config: object = None        # the bundled trainer's resolved config, when the probe is the trainer
    trainer_config_error: Optional[str] = None
    network_timeout_s: float = 2.0
    notes: dict = field(default_factory=dict)


CheckFn = Callable[[Context], Iterable[Finding]]
registry: list[tuple[str, CheckFn]] = []


def check(name: str) -> Callable[[CheckFn], CheckFn]:
    """Register a check. It returns (or yields) Findings; an exception in it becomes a failed Finding."""
    def register(fn: CheckFn) -> CheckFn:
        registry.append((name, fn))
        return fn
    return register


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


def run_checks(ctx: Context) -> list[Finding]:
    """Every registered check, concurrently (network checks wait on timeouts, not on the CPU), in order."""
    with ThreadPoolExecutor(max_workers=max(1, len(registry))) as pool:
        futures = [pool.submit(_run_one, name, fn, ctx) for name, fn in registry]
        return [f for fut in futures for f in fut.result()]


def is_bundled_trainer(spec: Spec) -> bool:
    argv = spec.base_command()
    return spec.command is None or (len(argv) >= 3 and argv[1] == "-m" and argv[2] == "trainer.train")


def build_context(spec: Spec, spec_path: str = "") -> Context:
    """The context of a spec: for the bundled trainer, its config resolved from the spec's overrides (pydantic
    only, no TensorFlow import)."""
    ctx = Context(spec=spec, spec_path=spec_path, network_timeout_s=spec.preflight.network_timeout_s)
    if is_bundled_trainer(spec):
        try:
            from trainer.config import ConfigError, load_config
        except ImportError as exc:
            ctx.trainer_config_error = f"the bundled trainer is not importable here ({exc})"
            return ctx
        args = spec.argv(spec.batch_sizes[0])[len(spec.base_command()):]
        if spec.overnight is not None:
            args += [f"{k}={v}" for k, v in spec.overnight.overrides.items()]
        try:
            ctx.trainer_config = load_config(args)
        except ConfigError as exc:
            ctx.trainer_config_error = f"trainer: {exc}"
    return ctx


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

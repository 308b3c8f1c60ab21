"""A ladder report written out: markdown with its plots, JSON for scripts, CSV of the table."""
from __future__ import annotations

import json
from pathlib import Path

from hlrp_ladder import overnight
from hlrp_ladder.report.analysis import memory_fit
from hlrp_ladder.report.plots import plot_forecast, plot_memory
from hlrp_ladder.report.prose import markdown
from hlrp_ladder.report.tables import frame
from hlrp_ladder.report.view import RunView
from hlrp_ladder.util.files import write_report


def as_json(view: RunView) -> str:
    night = overnight.status_of(view.store) if overnight.folders(view.store) else None
    return json.dumps({
        "overnight": night,
        "name": view.spec.name, "run": str(view.store.root), "status": view.state.get("status"),
        "pick": view.verdict.pick, "reason": view.verdict.reason, "exit_code": view.verdict.exit_code,
        "confirmed_by": view.verdict.confirmed_by, "memory_model": memory_fit(view),
        "probes": [{**rec.model_dump(mode="json"), "duration_s": round(rec.duration_s, 3)} for rec in view.records],
        "warnings": view.warnings,
    }, indent=2)


def _markdown(view: RunView, out_dir: Path, report_command: str) -> str:
    png = plot_memory(view, out_dir / f"{view.title}-memory.png")
    fpng = plot_forecast(view, out_dir / f"{view.title}-forecast.png")
    return markdown(view, png.name if png else None, report_command, fpng.name if fpng else None)


def write(view: RunView, out_dir: Path, fmt: str, report_command: str) -> Path:
    """reports/<name>-<run-id>.md (with its PNGs), .json or .csv."""
    return write_report(out_dir, view.title, fmt, {
        "json": lambda: as_json(view) + "\n", "csv": lambda: frame(view, readable=False).to_csv(index=False),
        "md": lambda: _markdown(view, out_dir, report_command)})

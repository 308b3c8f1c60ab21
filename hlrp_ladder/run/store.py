"""The run folder: ``runs/<name>/<run-id>/`` with the spec snapshot, ``ladder.json`` and one folder per probe.

Every file is written whole or not at all (temp file + rename). A probe folder without ``result.json`` is a
probe that never finished; ``--resume`` kills whatever it left running and sets the folder aside.
"""
from __future__ import annotations

import fcntl
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml
from pydantic import ValidationError

from hlrp_ladder.probe.folder import RESULT, ProbeFolder
from hlrp_ladder.records import SEARCH_PHASES, Outcome, Phase, ProbeRecord
from hlrp_ladder.search.state import Plan
from hlrp_ladder.spec.loader import load_yaml
from hlrp_ladder.spec.model import Spec
from hlrp_ladder.util.files import DiskFull, atomic_write, overwrite_in_place, write_json

STATE, SPEC_SNAPSHOT = "ladder.json", "spec.yaml"


class StoreError(RuntimeError):
    """A run folder cannot be used as asked; the message is one line."""


def probe_folder_name(batch_size: int, phase: Phase = Phase.ladder, repeat: int = 0, retry: int = 0) -> str:
    """bs-0024 (ladder, refine), bs-0024-stress, bs-0024-repeat2, bs-0024-retry1, bs-0024-stress-retry1."""
    name = f"bs-{batch_size:04d}"
    if phase not in SEARCH_PHASES:
        name += f"-{phase}"
    return name + (str(repeat) if repeat else "") + (f"-retry{retry}" if retry else "")


@dataclass
class Loaded:
    records: list[ProbeRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class RunStore:
    def __init__(self, root: Path):
        self.root = root
        self._lock_handle = None

    # ---- finding runs ----------------------------------------------------------------------------------------
    @staticmethod
    def create(spec: Spec, command_line: list[str], plan: Optional[dict] = None,
               host: Optional[dict] = None, kind: str = "ladder", fingerprint: Optional[str] = None,
               **state) -> "RunStore":
        """A new run folder with the spec's snapshot and ``ladder.json``, which keeps the resolved ``plan``
        (limits in bytes), the ``host`` facts the run is judged by, and what else the run keeps (``state``: a
        compare run's batch size and variants), in one write. A compare run's folder ends in ``-compare``."""
        base = Path(spec.runs_dir).expanduser() / spec.name
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"runs_dir: cannot create {base} ({exc.strerror})") from None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1, 1000):
            root = base / ((stamp if n == 1 else f"{stamp}-{n}") + ("" if kind == "ladder" else f"-{kind}"))
            try:
                root.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise StoreError(f"runs_dir: cannot create {root} ({exc.strerror})") from None
        store = RunStore(root)
        try:
            atomic_write(root / SPEC_SNAPSHOT, yaml.safe_dump(spec.masked(), sort_keys=False))
            store.write_state(name=spec.name, run_id=root.name, kind=kind,
                              fingerprint=fingerprint or spec.fingerprint(), status="running",
                              command=command_line, created=time.time(), plan=plan, host=host, **state)
        except DiskFull:
            shutil.rmtree(root, ignore_errors=True)  # no half-made run folder is left behind
            raise
        return store

    @property
    def kind(self) -> str:
        """ladder | compare."""
        return "compare" if self.root.name.endswith("-compare") else "ladder"

    @staticmethod
    def runs(runs_dir: Path, name: Optional[str] = None, kind: Optional[str] = None) -> list[Path]:
        """Run folders (of one kind: ladder | compare), oldest first."""
        pattern = f"{name}/*/{STATE}" if name else f"*/*/{STATE}"
        found = [p.parent for p in Path(runs_dir).expanduser().glob(pattern)]
        if kind is not None:
            found = [p for p in found if RunStore(p).kind == kind]
        return sorted(found, key=lambda p: (p.name, p.parent.name))

    @staticmethod
    def find(runs_dir: Path, run: Optional[str], name: Optional[str] = None,
             kind: Optional[str] = None) -> "RunStore":
        """``run`` may be a path, ``name/run-id`` or a run-id; None means the latest run (of ``kind``)."""
        if run:
            for candidate in (Path(run), Path(runs_dir) / run, *(Path(runs_dir).glob(f"*/{run}"))):
                if (candidate / STATE).is_file():
                    return RunStore(candidate)
            raise StoreError(f"{run}: no such run under {runs_dir} (hlrp-ladder runs lists them)")
        runs = RunStore.runs(runs_dir, name, kind)
        if not runs:
            what = f"of '{name}' " if name else ""
            return_kind = f"{kind} " if kind and kind != "ladder" else ""
            raise StoreError(f"no {return_kind}runs {what}under {runs_dir} (run from the spec's folder, or name its "
                             f"runs with --spec SPEC or --runs-dir DIR)")
        return RunStore(runs[-1])

    # ---- state -----------------------------------------------------------------------------------------------
    def state(self) -> dict:
        try:
            return json.loads((self.root / STATE).read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.root / STATE}: unreadable ({exc})") from None

    def write_state(self, **fields) -> None:
        path = self.root / STATE
        current = {}
        if path.exists():
            try:
                current = json.loads(path.read_text())
            except ValueError:
                current = {}
        current.update(fields, updated=time.time())
        write_json(path, current)

    def mark_stopped(self, status: str, reason: str, exit_code: int) -> None:
        """The run's last word (interrupted, say), written even on a full disk: rewritten in place when no new
        file can be made."""
        try:
            self.write_state(status=status, reason=reason, exit_code=exit_code)
        except DiskFull:
            # In place, compact (the indented original is longer), and never longer than the file is now: a write
            # that needs a new block on a full disk would stop half-way and leave the state unreadable.
            path = self.root / STATE
            room = path.stat().st_size
            current = json.loads(path.read_text())
            current.update(status=status, reason=reason, exit_code=exit_code, updated=time.time())
            text = json.dumps(current, separators=(",", ":"), default=str)
            if len(text.encode()) > room:
                current["reason"] = f"{status}: the disk filled; free space and --resume"
                text = json.dumps(current, separators=(",", ":"), default=str)
            if len(text.encode()) <= room:
                overwrite_in_place(path, text)

    def snapshot(self) -> Spec:
        """The spec as the run saved it (secrets masked)."""
        try:
            return Spec.model_validate(load_yaml((self.root / SPEC_SNAPSHOT).read_text()))
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.root / SPEC_SNAPSHOT}: unreadable spec snapshot "
                             f"({str(exc).splitlines()[0]})") from None

    def plan(self) -> Plan:
        """The plan the run is judged by: the one stored when it started."""
        stored = self.state().get("plan")
        if not stored:
            raise StoreError(f"{self.root / STATE}: no stored plan (not a run of this version)")
        return Plan.from_json(stored)

    def lock(self) -> None:
        """Hold the run for this process; a second orchestrator on the same run is refused."""
        handle = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StoreError(f"{self.root}: another hlrp-ladder process is using this run") from None
        self._lock_handle = handle

    # ---- probes ----------------------------------------------------------------------------------------------
    def probe(self, name: str) -> ProbeFolder:
        """One probe folder of this run."""
        return ProbeFolder(self.root / name)

    def probe_dirs(self) -> list[Path]:
        """The probe folders (a ladder's bs-*, a compare run's <variant>-r<k>); set-aside ones have a '.'."""
        ladder = self.kind == "ladder"
        return sorted(p for p in self.root.iterdir() if p.is_dir() and "." not in p.name
                      and (p.name.startswith("bs-") if ladder else True))

    def load(self) -> Loaded:
        """Every whole record; a corrupt or truncated ``result.json`` is reported and treated as not run."""
        out = Loaded()
        for folder in self.probe_dirs():
            path = folder / RESULT
            if not path.exists():
                continue
            try:
                out.records.append(ProbeRecord.model_validate_json(path.read_text()))
            except (OSError, ValidationError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0][:120]
                out.warnings.append(f"{path}: corrupt record ({first}); treated as not run")
        return out

    def attempts(self, folder_name: str) -> int:
        return 1 + len(list(self.root.glob(f"{folder_name}.*")))

    def set_aside_folder(self, name: str) -> Optional[Path]:
        """Before a probe runs in ``name`` again (its earlier try was cancelled or interrupted): keep the old
        folder as ``name.<outcome>-N``; nothing is deleted."""
        folder = self.root / name
        if not folder.exists():
            return None
        try:
            reason = ProbeRecord.model_validate_json((folder / RESULT).read_text()).outcome.value
        except (OSError, ValidationError, ValueError):
            reason = "unfinished"
        target = folder.with_name(f"{name}.{reason}-{self.attempts(name)}")
        folder.rename(target)
        return target

    def finished(self) -> list[Path]:
        """Probe folders with a record."""
        return [folder for folder in self.probe_dirs() if (folder / RESULT).exists()]

    def unfinished(self) -> list[Path]:
        """Probe folders without a record: still running somewhere, or abandoned."""
        return [folder for folder in self.probe_dirs() if not (folder / RESULT).exists()]

    def set_aside(self, cleanup: Callable[[Path], int], skip: set[str] = frozenset()) -> list[str]:
        """Before a resume: stop what unfinished probes left running (``cleanup(folder)``, the executor's), and
        move aside the folders of probes that gave no verdict (unfinished,
        interrupted, corrupt, or inconclusive: an error or a timeout, which the user may have fixed since), so
        they run again. Folders in ``skip`` (re-attached, still running) stay. Nothing is deleted."""
        notes = []
        for folder in self.probe_dirs():
            if folder.name in skip:
                continue
            result = folder / RESULT
            reason = None
            if not result.exists():
                reason = "unfinished"
            else:
                try:
                    outcome = ProbeRecord.model_validate_json(result.read_text()).outcome
                    if outcome in (Outcome.interrupted, Outcome.cancelled):
                        reason = outcome.value
                    elif outcome.is_inconclusive:
                        reason = outcome.value
                except (OSError, ValidationError, ValueError):
                    reason = "corrupt"
            if reason is None:
                continue
            killed = cleanup(folder)
            target = folder.with_name(f"{folder.name}.{reason}-{self.attempts(folder.name)}")
            folder.rename(target)
            extra = f", killed {killed} leftover process(es)" if killed else ""
            notes.append(f"{folder.name}: {reason}; kept as {target.name}{extra}")
        return notes

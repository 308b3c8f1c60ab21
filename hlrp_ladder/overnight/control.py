"""Starting the long run detached, and stopping it gently, through the executor the spec names."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from hlrp_ladder import executors
from hlrp_ladder.executors.core import Executor, Handle
from hlrp_ladder.overnight.launch import Launch, LaunchError, folders
from hlrp_ladder.probe.folder import REQUEST, RUNNING, read_json
from hlrp_ladder.run.store import RunStore


def handle_of(folder: Path) -> Optional[Handle]:
    """A handle to the long run in ``folder`` if its runner (or job) is still there or its record is, else
    None (lost)."""
    return executors.for_folder(folder).reattach(folder)


def live_runs(store: RunStore) -> list[tuple[Path, Handle]]:
    out = []
    for folder in folders(store):
        handle = handle_of(folder)
        if handle is not None and handle.state() != "ended":
            out.append((folder, handle))
    return out


def refuse_if_live(store: RunStore, force: bool) -> None:
    """A second long run of the same ladder while one is alive is refused (naming it), unless --force."""
    if force:
        return
    for folder, handle in live_runs(store):
        bs = (read_json(folder / REQUEST) or {}).get("batch_size")
        raise LaunchError(f"an overnight run is alive: {folder} (bs={bs}, {handle.where()}); hlrp-ladder status "
                          f"shows it, --force stops it and launches anew")


def start(store: RunStore, executor: Executor, launch: Launch, force: bool, wait_s: float = 15.0) -> str:
    """Submit the long run detached (refusing, or with --force stopping, a live one); where it runs."""
    refuse_if_live(store, force)
    for folder, _ in live_runs(store):
        stop(folder)
    executor.configure(executor.facts(launch.request.cap_bytes))
    try:
        handle = executor.submit(launch.request, detached=True, name=launch.name)
    except FileExistsError as exc:  # the name is taken (a tmux session of that name)
        raise LaunchError(f"{exc}; set overnight.tmux_session") from None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        state = handle.state()
        if state in ("pending", "ended") or (state == "running" and (launch.request.folder / RUNNING).exists()):
            return handle.where()
        time.sleep(0.05)
    raise LaunchError(f"the long run did not start within {wait_s:g} s; see {launch.request.folder / 'runner.log'}")


def stop(folder: Path, margin_s: float = 30.0) -> None:
    """Stop a live long run: its runner gives the trainer SIGTERM and its grace, then kills the tree and
    records it as interrupted. The runner itself is killed only if it has not finished well after that."""
    handle = handle_of(folder)
    if handle is None:
        return
    handle.cancel()
    deadline = time.monotonic() + handle.request.stop_grace_s + margin_s
    while time.monotonic() < deadline:
        if handle.poll() is not None:
            return
        time.sleep(0.1)

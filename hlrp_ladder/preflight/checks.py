"""The built-in preflight checks. Each one finds one kind of blocker and says the fix to try."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional

from hlrp_ladder.preflight.core import FAIL, OK, SKIP, WARN, Context, Finding, check
from hlrp_ladder.util.sizes import gib

WANDB_HOST = "api.wandb.ai"
FILE_KEY_ENDINGS = (".checkpoint", "_checkpoint", "_path", ".path", "_file", ".file")
HUB_KEY_ENDINGS = ("pretrained", "name_or_path", "model_id", "hub_id")


# ---------------------------------------------------------------------------------------------------- helpers
def writable_dir(path: Path) -> Optional[str]:
    """None if ``path`` exists (or can be made) and a file can be created in it; else why not. Tries for
    real (a temporary directory, removed again), so a read-only mount or another user's folder is caught."""
    path = path.expanduser()
    probe_at = path
    while not probe_at.exists():
        if probe_at.parent == probe_at:
            return f"no existing parent of {path}"
        probe_at = probe_at.parent
    if not probe_at.is_dir():
        return f"{probe_at} is not a directory"
    try:
        Path(tempfile.mkdtemp(prefix=".hlrp-preflight-", dir=probe_at)).rmdir()
    except OSError as exc:
        if probe_at == path:
            return f"cannot write in {path}: {exc.strerror or exc}"
        return f"cannot create {path}: cannot write in its nearest existing parent {probe_at}: {exc.strerror or exc}"
    return None


def reachable(host: str, port: Optional[int], timeout: float) -> Optional[str]:
    """None if ``host`` resolves (and accepts a TCP connection on ``port``) within ``timeout``; else why not.
    DNS has no timeout of its own, so it runs in a daemon thread that is abandoned if it hangs."""
    result: dict = {}

    def resolve() -> None:
        try:
            result["addr"] = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)[0][4]
        except OSError as exc:
            result["error"] = f"DNS: {exc}"

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f"DNS lookup of {host} took over {timeout:g} s"
    if "error" in result:
        return result["error"]
    if port is None:
        return None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"TCP {host}:{port}: {exc.strerror or exc}"


def _overrides(ctx: Context) -> dict[str, object]:
    items = dict(ctx.spec.overrides)
    if ctx.spec.overnight is not None:
        items.update(ctx.spec.overnight.overrides)
    return items


def _env(ctx: Context) -> dict[str, str]:
    return {**os.environ, **ctx.spec.env}


# ---------------------------------------------------------------------------------------------------- checks
LOG_BYTES_PER_PROBE = 1 << 20   # a guess at a probe's log: the trainer's output is not ours to know
CSV_ROW_BYTES = 60              # one memory.csv row


def space_needed(spec) -> int:
    """A rough upper estimate of what a run of ``spec`` writes under runs_dir: each probe's folder (its
    timeline at the sampling rate for its whole timeout, a log, the JSON files) times the probes it may run."""
    rungs = len(spec.batch_sizes)
    probes = rungs * spec.repeats + (rungs if spec.stress is not None else 0) + 1
    if spec.compare is not None:
        probes = max(probes, len(spec.compare.variants) * spec.compare.repeats + 1)
    rows = spec.timeout_s / spec.memory.sample_interval_s
    return int(probes * (1 + spec.retries) * (rows * CSV_ROW_BYTES + LOG_BYTES_PER_PROBE + (64 << 10)))


@check("runs dir")
def runs_dir(ctx: Context) -> Iterator[Finding]:
    folder = Path(ctx.spec.runs_dir).expanduser()
    why = writable_dir(folder)
    if why is not None:
        yield Finding("runs dir", FAIL, why, "set runs_dir in the spec to a writable folder, e.g. runs_dir: /tmp/hlrp-runs")
        return
    here = folder
    while not here.exists():
        here = here.parent
    free, need = shutil.disk_usage(here).free, space_needed(ctx.spec)
    if free < need:
        yield Finding("runs dir", WARN, f"{ctx.spec.runs_dir} is writable, but its filesystem has {gib(free)} free "
                      f"and a run may write about {gib(need)} (probes x timeline, log and records)",
                      "free space there, or set runs_dir to a folder with room; a run that fills the disk stops, "
                      "says so, and resumes with --resume")
    else:
        yield Finding("runs dir", OK, f"{ctx.spec.runs_dir} is writable, {gib(free)} free (a run may write about "
                      f"{gib(need)})")


@check("output dirs")
def output_dirs(ctx: Context) -> Iterator[Finding]:
    """Overrides whose key names an output folder (``*_dir``): a guess, so a warning when not writable. A plugin
    that knows its trainer's folders checks those for certain (and claims them)."""
    dirs = {key: value for key, value in _overrides(ctx).items()
            if key not in ctx.claimed and key.endswith(("_dir", ".dir")) and looks_like_path(value)}
    for key, value in sorted(dirs.items()):
        if PROBE_DIR in value:  # each probe's own folder: made by the runner
            yield Finding(f"dir {key}", OK, f"{value}: inside each probe's own folder")
            continue
        if ctx.spec.executor.max_parallel > 1:
            yield Finding(f"dir {key}", WARN, f"{value} is one folder for every probe, and "
                          f"{ctx.spec.executor.max_parallel} run at once: they write the same files",
                          f"give each probe its own: {key}={PROBE_DIR}/{key.lstrip('-').split('.')[-1]}")
        why = writable_dir(Path(os.path.expanduser(value)))
        if why is None:
            yield Finding(f"dir {key}", OK, f"{value} is writable")
        else:
            yield Finding(f"dir {key}", WARN, why + " (the key's name suggests an output folder)",
                          f"add the override {key}=/tmp/{ctx.spec.name}-{key.split('.')[-1]} (or make it writable)")


PROBE_DIR = "{probe_dir}"   # in an override or env value: the probe's own folder (run/session.probe_request)
PATH_EXTENSIONS = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".json", ".yaml", ".yml", ".npz", ".npy", ".h5",
                   ".pkl", ".pickle", ".tar", ".gz", ".zip", ".msgpack", ".onnx", ".txt", ".csv", ".parquet")


def looks_like_path(value: object) -> bool:
    """A value is checked as a file only when it looks like one: a separator, a leading ~ or ., or a known
    extension — never a bool, a number or a bare word (``--always_save_checkpoint=False`` names no file)."""
    if not isinstance(value, str) or not value or value.lower() in ("true", "false", "none", "null", "yes", "no"):
        return False
    try:
        float(value)
        return False
    except ValueError:
        pass
    return os.sep in value or value.startswith(("~", ".")) or value.lower().endswith(PATH_EXTENSIONS)


@check("files")
def files(ctx: Context) -> Iterator[Finding]:
    named = {k: v for k, v in _overrides(ctx).items() if k not in ctx.claimed and
             k.lstrip("-").endswith(FILE_KEY_ENDINGS) and looks_like_path(v)}
    if not named:
        yield Finding("files", SKIP, "no override names a file (beyond what a plugin checks)")
    for key, value in sorted(named.items()):
        path = Path(os.path.expanduser(value))
        if path.is_file():
            yield Finding(f"file {key}", OK, f"{path} exists ({path.stat().st_size} bytes)")
        else:  # a guess from the key's name: the trainer may not read it as a file at all
            yield Finding(f"file {key}", WARN, f"{path} does not exist (the key's name suggests a file; the trainer "
                                               f"may read it otherwise)", f"check {key} in the spec's overrides")


@check("hub cache")
def hub_cache(ctx: Context) -> Iterator[Finding]:
    env = _env(ctx)
    offline = any(env.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    ids = {k: v for k, v in _overrides(ctx).items()
           if isinstance(v, str) and k.endswith(HUB_KEY_ENDINGS) and "/" in v and not Path(v).exists()}
    if not offline:
        yield Finding("hub cache", SKIP, "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE not set")
        return
    if not ids:
        yield Finding("hub cache", OK, "offline, and no override names a hub model to fetch")
        return
    hub = Path(env.get("HF_HUB_CACHE") or Path(env.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub")
    for key, repo in sorted(ids.items()):
        folder = hub.expanduser() / f"models--{repo.replace('/', '--')}"
        if (folder / "snapshots").is_dir() and any((folder / "snapshots").iterdir()):
            yield Finding(f"hub {key}", OK, f"{repo} is in {hub}")
        else:  # the key's name suggests a hub id: a guess, so a warning
            yield Finding(f"hub {key}", WARN, f"offline, and {repo} (a hub model id, going by the key's name) is not in "
                                              f"the cache {hub}",
                          f"on a machine with network: huggingface-cli download {repo} (with HF_HOME pointing here)")


@check("probe command")
def probe_command(ctx: Context) -> Iterator[Finding]:
    argv = ctx.spec.trainer_command()  # the trainer, not its launcher (torchrun's module, srun)
    exe = argv[0] if os.sep in argv[0] else shutil.which(argv[0], path=_env(ctx).get("PATH"))
    if not exe or not os.access(exe, os.X_OK):
        yield Finding("probe command", FAIL, f"{argv[0]!r} is not an executable here", "fix command in the spec")
        return
    if len(argv) >= 3 and argv[1] == "-m":
        code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 3)"
        try:
            res = subprocess.run([exe, "-c", code, argv[2]], capture_output=True, text=True, timeout=20,
                                 env=_env(ctx), cwd=os.getcwd())
        except (OSError, subprocess.TimeoutExpired) as exc:
            yield Finding("probe command", FAIL, f"{exe} did not answer: {exc}")
            return
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["not found"])[-1]
            yield Finding("probe command", FAIL, f"{exe} cannot import {argv[2]} ({last})",
                          "install the trainer into that interpreter (pip install -e '.[trainer]')")
            return
        yield Finding("probe command", OK, f"{exe} imports {argv[2]}")
        return
    script = next((a for a in argv[1:] if a.endswith(".py")), None)
    if script and not Path(script).is_file():
        yield Finding("probe command", FAIL, f"{script} does not exist", "fix command in the spec")
        return
    yield Finding("probe command", OK, f"{exe} found")


@check("overnight")
def overnight(ctx: Context) -> Iterator[Finding]:
    night = ctx.spec.overnight
    if night is None:
        yield Finding("overnight", SKIP, "no overnight section")
        return
    if night.max_steps is None and night.hours is None:
        yield Finding("overnight", FAIL, "overnight needs max_steps or hours", "add overnight.max_steps: N")
    tmux = shutil.which("tmux")
    if ctx.spec.executor.kind == "slurm":
        yield Finding("overnight start", OK, "the long run starts as a SLURM job (sbatch), its runner's output in "
                                             "its folder's runner.log")
    elif tmux:
        yield Finding("overnight tmux", OK, f"{tmux}: the long run starts in a tmux session")
    else:
        yield Finding("overnight tmux", WARN, "tmux is not installed: the long run starts detached with a log file, "
                                              "but there is no session to attach to", "apt-get install -y tmux")
    wandb = [k for k, v in _overrides(ctx).items() if k.endswith("use_wandb") and v in (True, "true", "True", 1)]
    if wandb and _env(ctx).get("WANDB_MODE", "") not in ("offline", "disabled"):
        why = reachable(WANDB_HOST, 443, ctx.network_timeout_s)
        if why:
            yield Finding("overnight wandb", WARN, f"{wandb[0]}=true but {why}", "set env WANDB_MODE=offline")


@check("hosts")
def hosts(ctx: Context) -> Iterator[Finding]:
    wanted = ctx.spec.preflight.hosts
    if not wanted:
        yield Finding("hosts", SKIP, "no hosts listed (preflight.hosts)")
        return
    for item in wanted:
        host, _, port = item.partition(":")
        why = reachable(host, int(port) if port else None, ctx.network_timeout_s)
        if why is None:
            yield Finding(f"host {item}", OK, "resolves" + (" and accepts connections" if port else ""))
        else:
            yield Finding(f"host {item}", FAIL, why, "check the cluster's DNS / VPN, or the host name")

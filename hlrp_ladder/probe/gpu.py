"""GPU memory for one probe: the devices it sees, the tree's memory on each (NVML, per process), the soft limit
resolved against them on this node, and an emulated smaller GPU (``memory.gpu.cap``).

Everything here is inert on a machine without NVML or a GPU: the probe is then judged on host memory only, and
the record says why (``limits.gpu_note``).

An emulated cap is held by the strongest mechanism there is, and the record names it:

* ``mps``: a CUDA MPS control daemon started for the probe (its own pipe folder) and
  ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` in the tree's environment. The driver enforces it for every allocation of
  every client process, any framework, the CUDA context included. Measured on the lent H200: 10 GiB under a
  20 GiB limit allocates, 30 GiB fails with "CUDA out of memory ... of which 19.50 GiB is free".
* ``torch``: ``torch.cuda.set_per_process_memory_fraction(cap / device memory)``, queued by the ``torch_cap``
  sitecustomize for the moment torch first initialises CUDA (no change to the trainer). It limits PyTorch's
  caching allocator only: not the CUDA context (~0.5 GiB), not memory another library allocates.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import psutil

from hlrp_ladder.records import GpuRequest, Limits
from hlrp_ladder.util import sizes
from hlrp_ladder.util.sizes import gib

MPS_CONTROL = "nvidia-cuda-mps-control"
TORCH_CAP_DIR = Path(__file__).resolve().parent / "torch_cap"
CAP_ENV = "HLRP_LADDER_GPU_CAP_BYTES"
FORCE_ENV = "HLRP_LADDER_GPU_CAP_MECHANISM"   # "torch": skip MPS (a site where MPS is not wanted)
COVERS = {
    "mps": "every allocation of the probe's processes, any framework, the CUDA context included (driver-enforced: "
           "CUDA MPS pinned device memory limit)",
    "torch": "PyTorch's caching allocator only (torch.cuda.set_per_process_memory_fraction): not the CUDA context "
             "(~0.5 GiB), not memory allocated outside PyTorch, not a process that does not import torch",
}


class GpuConfigError(ValueError):
    """The spec asks for what this node's GPUs cannot give (no GPU, a cap above a device's memory)."""


@dataclass(frozen=True)
class Device:
    index: int          # NVML's index (PCI bus order; the probe gets CUDA_DEVICE_ORDER=PCI_BUS_ID to match)
    name: str
    total: int          # bytes
    handle: object

    def words(self) -> str:
        return f"GPU {self.index} ({self.name}, {gib(self.total, 1)})"


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, ""
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no GPU to speak of
        return None, f"NVML is not usable here ({exc})"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_devices(visible: Optional[str] = None) -> tuple[list[Device], object, str]:
    """The devices a process with ``CUDA_VISIBLE_DEVICES=visible`` sees (None: all of them), NVML, and why
    there are none when there are none."""
    nvml, why = _nvml()
    if nvml is None:
        return [], None, why
    try:
        count = nvml.nvmlDeviceGetCount()
        every = []
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            every.append((Device(i, _text(nvml.nvmlDeviceGetName(handle)),
                                 int(nvml.nvmlDeviceGetMemoryInfo(handle).total), handle),
                          _text(nvml.nvmlDeviceGetUUID(handle))))
    except Exception as exc:
        return [], None, f"NVML could not list the GPUs ({exc})"
    if visible is None:
        chosen = [d for d, _ in every]
    else:
        chosen = []
        for item in (v.strip() for v in visible.split(",")):
            if not item:
                break  # CUDA stops at the first empty or unknown entry
            match = [d for d, uuid in every if item == str(d.index) or (item.startswith("GPU-") and uuid.startswith(item))]
            if not match:
                break
            chosen.append(match[0])
    if not chosen:
        why = "no GPU is visible" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
        return [], nvml, why
    return chosen, nvml, ""


class GpuReader:
    """The tree's GPU memory on each device, per sample.

    NVML lists each device's compute processes (and MPS clients) with their memory; the tree's are summed. In a
    container NVML's pids can be the host's, not this namespace's: when a device lists processes of which none
    exists here, the device's used memory less what it used when the probe started is read instead — sound only
    when the probe is alone on the device, so only then (no process listed at the start); otherwise that device
    is unattributed and the reading is None (the policy then cannot judge it, and says so)."""

    def __init__(self, nvml, devices: list[Device]):
        self.nvml, self.devices = nvml, devices
        self.baseline, self.alone = {}, {}
        for d in devices:
            self.baseline[d.index] = self._used(d) or 0
            self.alone[d.index] = not self._procs(d)
        self.peaks: dict[int, int] = {}
        self.sources: set[str] = set()
        self.by_pid: dict[int, int] = {}   # the last reading's GPU memory of each of the tree's processes
        self.unread = 0                    # samples whose GPU memory could not be attributed (not judged then)
        self.attributed = True             # the last reading was per process (by_pid is whole)

    def _procs(self, device: Device) -> dict[int, int]:
        out: dict[int, int] = {}
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetMPSComputeRunningProcesses"):
            try:
                for p in getattr(self.nvml, getter)(device.handle):
                    out[p.pid] = max(out.get(p.pid, 0), p.usedGpuMemory or 0)
            except Exception:  # not supported by this driver, or the device went away
                continue
        return out

    def _used(self, device: Device) -> Optional[int]:
        try:
            return int(self.nvml.nvmlDeviceGetMemoryInfo(device.handle).used)
        except Exception:
            return None

    def read(self, pids: Iterable[int]) -> Optional[int]:
        """Bytes on the tree's busiest device now; None when a device's share cannot be attributed."""
        pids = set(pids)
        worst = 0
        self.by_pid, self.attributed = {}, True
        for d in self.devices:
            procs = self._procs(d)
            mine = [used for pid, used in procs.items() if pid in pids]
            for pid, used in procs.items():
                if pid in pids:
                    self.by_pid[pid] = self.by_pid.get(pid, 0) + used
            if mine or not procs:
                value = sum(mine)
                self.sources.add("nvml per process")
            elif not any(psutil.pid_exists(pid) for pid in procs) and self.alone[d.index]:
                used = self._used(d)
                if used is None:
                    self.unread += 1
                    self.attributed = False
                    return None
                value = max(0, used - self.baseline[d.index])
                self.attributed = False
                self.sources.add(f"nvml device used less its {gib(self.baseline[d.index])} at the start (NVML's "
                                 f"pids are not this namespace's; the probe was alone on the device)")
            elif not any(psutil.pid_exists(pid) for pid in procs):
                self.sources.add("unattributed: NVML's pids are not this namespace's and the device was shared")
                self.unread += 1
                self.attributed = False
                return None
            else:
                value = 0  # another process of this machine, not the tree's
            self.peaks[d.index] = max(self.peaks.get(d.index, 0), value)
            worst = max(worst, value)
        return worst

    def source(self) -> str:
        return "; ".join(sorted(self.sources))


@dataclass
class GpuProbe:
    """What the runner needs of the GPUs for one probe: the environment to add, the reader, the limit per
    device, what goes into the record's limits, and what to undo at the end."""
    reader: Optional[GpuReader] = None
    limit_bytes: Optional[int] = None
    env: dict[str, str] = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    stop_daemon: Callable[[], None] = lambda: None
    pipe: Optional[str] = None               # the MPS daemon's folder, while one runs (in running.json)

    def record(self, limits: Limits) -> Limits:
        return limits.model_copy(update=self.limits)

    def stop(self) -> None:
        """Undo what was set up (the MPS daemon and its folder); once."""
        stop, self.stop_daemon = self.stop_daemon, lambda: None
        stop()


def prepare(request: Optional[GpuRequest], env: dict[str, str], marker_env: dict[str, str]) -> GpuProbe:
    """The GPUs of one probe, set up: devices found, limit resolved, emulated cap started. ``env`` is the
    probe's environment (its CUDA_VISIBLE_DEVICES counts); ``marker_env`` marks a started MPS daemon as the
    probe's, so a resume that cleans up after a dead runner stops it too. Raises :class:`GpuConfigError`."""
    if request is None:
        return GpuProbe(limits={"gpu_note": "GPU memory not judged (a request from before memory.gpu)"})
    add: dict[str, str] = {}
    if request.devices is not None:
        add = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, request.devices))}
    if "CUDA_DEVICE_ORDER" not in env:  # CUDA's numbering as NVML's (PCI bus order), which the reader uses
        add["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    visible = add.get("CUDA_VISIBLE_DEVICES", env.get("CUDA_VISIBLE_DEVICES"))
    devices, nvml, why = visible_devices(visible)
    if not devices:
        if request.required:
            raise GpuConfigError(f"memory.gpu: the spec judges GPU memory, but {why} on {os.uname().nodename}")
        return GpuProbe(env=add, limits={"gpu_note": f"GPU memory not judged: {why}"})
    cap = None if request.cap is None else sizes.resolve(request.cap, 1)
    for d in devices:
        if cap is not None and cap > d.total:
            raise GpuConfigError(f"memory.gpu.cap: {gib(cap, 1)} is more than {d.words()} has")
    effective = [min(cap, d.total) if cap else d.total for d in devices]
    limit = min(sizes.resolve(request.limit, total) for total in effective)
    limits = {"gpu_limit_bytes": limit, "gpu_total_bytes": min(effective), "gpu_cap_bytes": cap,
              "gpu_devices": [f"{d.index}: {d.name}, {gib(d.total, 1)}" for d in devices]}
    stop: Callable[[], None] = lambda: None
    pipe = None
    if cap is not None:
        mechanism, cap_env, stop, note = emulate(cap, devices, {**env, **add}, marker_env)
        add.update(cap_env)
        pipe = cap_env.get("CUDA_MPS_PIPE_DIRECTORY")
        limits.update(gpu_cap_mechanism=mechanism, gpu_cap_covers=COVERS[mechanism] + note)
    return GpuProbe(GpuReader(nvml, devices), limit, add, limits, stop, pipe)


def emulate(cap: int, devices: list[Device], env: dict[str, str],
            marker_env: dict[str, str]) -> tuple[str, dict[str, str], Callable[[], None], str]:
    """Hold the probe to ``cap`` bytes per device: (mechanism, environment for the tree, how to undo it, a note
    on why MPS was not used)."""
    note = ""
    control = shutil.which(MPS_CONTROL)
    if env.get(FORCE_ENV) == "torch":
        note = f"; MPS not tried: {FORCE_ENV}=torch"
    elif control is None:
        note = f"; MPS not used: {MPS_CONTROL} is not on the PATH"
    else:
        # A short folder: the daemon's pipes are unix sockets, whose paths may not be long.
        pipe = tempfile.mkdtemp(prefix="hlrp-mps-")
        mps = {"CUDA_MPS_PIPE_DIRECTORY": pipe, "CUDA_MPS_LOG_DIRECTORY": pipe}
        daemon_env = {**os.environ, **env, **mps, **marker_env}
        def stop() -> None:
            try:
                subprocess.run([control], input="quit\n", env=daemon_env, capture_output=True, text=True, timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                pass
            shutil.rmtree(pipe, ignore_errors=True)

        try:
            started = subprocess.run([control, "-d"], env=daemon_env, capture_output=True, text=True, timeout=20)
            ok, why = started.returncode == 0, (started.stderr or started.stdout).strip()[:200]
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, why = False, str(exc)
        if ok:

            # A client's device ordinals count the devices the daemon sees (its CUDA_VISIBLE_DEVICES): 0..n-1.
            ordinals = [str(i) for i in range(len(devices))]
            limit = ",".join(f"{i}={cap // sizes.MIB}M" for i in ordinals)
            client = {**mps, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": limit}
            if "CUDA_VISIBLE_DEVICES" in env:
                client["CUDA_VISIBLE_DEVICES"] = ",".join(ordinals)
            return "mps", client, stop, ""
        stop()  # a daemon that forked before it failed is told to quit too
        note = f"; MPS not used: {MPS_CONTROL} -d failed ({why or 'no reason given'})"
    path = os.pathsep.join(p for p in (str(TORCH_CAP_DIR), env.get("PYTHONPATH", "")) if p)
    return "torch", {CAP_ENV: str(cap), "PYTHONPATH": path}, lambda: None, note


def local_indices() -> list[int]:
    """NVML indices of the GPUs this process may hand out (its own CUDA_VISIBLE_DEVICES counts)."""
    return [d.index for d in visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))[0]]


def per_probe(asked: Optional[int], visible: int) -> int:
    """``executor.gpus_per_probe``, defaulted: 1 where GPUs are visible, else 0."""
    return asked if asked is not None else (1 if visible else 0)


def slot_devices(visible: list[int], slots: int, per: int) -> Optional[list[list[int]]]:
    """Each slot's own devices, ``per`` of them; None when there is nothing to hand out or not enough (preflight
    refuses that spec)."""
    if per == 0 or slots * per > len(visible):
        return None
    return [visible[i * per:(i + 1) * per] for i in range(slots)]

"""The torch-level emulated GPU cap (``memory.gpu.cap`` where CUDA MPS is not there), applied without changes to
the trainer: the probe runner puts this folder first on the probe's ``PYTHONPATH``, so every Python process of
the tree runs this file at start-up. It does nothing until the trainer imports torch; then it queues, for the
moment torch first initialises CUDA, ``torch.cuda.set_per_process_memory_fraction(cap / device total)`` on
every visible device. It covers PyTorch's caching allocator only: not the CUDA context, not memory other
libraries allocate outside it (the record says so).

Python runs only the first ``sitecustomize`` on its path, so this one runs the one it shadows, if any.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_ENV = "HLRP_LADDER_GPU_CAP_BYTES"
_HERE = os.path.dirname(os.path.abspath(__file__))


def _apply_cap() -> None:
    import torch

    cap = int(os.environ[_ENV])
    for index in range(torch.cuda.device_count()):
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), index)


class _TorchWatch(importlib.abc.MetaPathFinder):
    """Waits for ``import torch`` to finish, then queues the cap for torch's lazy CUDA initialisation."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.cuda._lazy_call(_apply_cap)   # runs inside torch's CUDA init, before any allocation

        spec.loader.exec_module = exec_module
        return spec


def _chain() -> None:
    """Run the sitecustomize this one shadows (a distribution's or a virtualenv's), as Python would have."""
    rest = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and os.path.abspath(spec.origin or "") != os.path.abspath(__file__):
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if os.environ.get(_ENV, "").isdigit():
    sys.meta_path.insert(0, _TorchWatch())
_chain()

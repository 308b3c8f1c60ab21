"""Preflight: every environment blocker in seconds, before the first probe.

A check is one function registered with :func:`check`; it gets the :class:`Context` and returns one or more
:class:`Finding` (status, detail, the fix to try). Executors and later features add their own checks the same
way. ``run`` and ``launch-overnight`` call :func:`run_checks` first; any blocking failure stops them.
"""
from hlrp_ladder.preflight.core import (Context, Finding, build_context, check, context_hook, findings, registry,
                                       run_checks, table)
from hlrp_ladder.preflight import checks as _checks  # noqa: F401,E402  (registers the built-in checks)
from hlrp_ladder.preflight import local as _local  # noqa: F401,E402  (the local executor's)
from hlrp_ladder.preflight import slurm as _slurm  # noqa: F401,E402  (the SLURM executor's)
from hlrp_ladder.preflight.local import gpu_cap_error  # noqa: E402

__all__ = ["Context", "Finding", "build_context", "check", "context_hook", "findings", "gpu_cap_error", "registry",
           "run_checks", "table"]

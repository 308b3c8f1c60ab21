"""The ladder policy: pure functions over probe records. No I/O, no processes, no clock.

``state`` (plans, rungs, verdicts, each probe slot's standing, the peak a record is judged by), ``boundary`` (the
search for the limit with one-val probes), ``confirm`` (repeats, stress, headroom, forecast of a candidate),
``decide`` (the two calls: ``next_rung`` and ``verdict``), ``words`` (a clause per record); beside them
``plan`` (a spec resolved to a plan), ``schedule`` (parallel slots), ``memory_model``, ``forecast`` and ``stats``.
The policy's public surface is re-exported here.
"""
from hlrp_ladder.records import SEARCH_PHASES
from hlrp_ladder.search.state import (EXIT_BLOCKED, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED, EXIT_NO_SPACE, EXIT_NO_STABLE,
                                      EXIT_PICK, EXIT_USAGE, Plan, Rung, Verdict, attempts, failed_on, fit_peak,
                                      gpu_peak, latest, rung_key, warmup_cap)
from hlrp_ladder.search.decide import next_rung, replay, verdict
from hlrp_ladder.search.words import probe_clause

__all__ = ["EXIT_BLOCKED", "EXIT_INCONCLUSIVE", "EXIT_INTERRUPTED", "EXIT_NO_SPACE", "EXIT_NO_STABLE", "EXIT_PICK", "EXIT_USAGE",
           "Plan", "Rung", "SEARCH_PHASES", "Verdict", "attempts", "failed_on", "fit_peak", "gpu_peak", "latest",
           "next_rung",
           "probe_clause", "replay", "rung_key", "verdict", "warmup_cap"]

"""A ladder run as a report shows it: its state, spec snapshot, records, verdict and the plan it was judged by."""
from __future__ import annotations

from dataclasses import dataclass

from hlrp_ladder.records import ProbeRecord
from hlrp_ladder.run.store import RunStore
from hlrp_ladder.search.state import Plan, Verdict
from hlrp_ladder.search.decide import verdict
from hlrp_ladder.spec.model import Spec


@dataclass
class RunView:
    """Everything a report shows about one run."""
    store: RunStore
    state: dict
    spec: Spec
    records: list[ProbeRecord]
    warnings: list[str]
    verdict: Verdict
    plan: Plan

    @property
    def title(self) -> str:
        return f"{self.spec.name}-{self.store.root.name}"


def load_run(store: RunStore) -> RunView:
    """A ladder run as its report shows it: judged with the plan it stored when it started."""
    spec = store.snapshot()
    loaded = store.load()
    records = sorted(loaded.records, key=lambda r: r.started_at)
    plan = store.plan()
    return RunView(store, store.state(), spec, records, loaded.warnings, verdict(plan, records), plan)

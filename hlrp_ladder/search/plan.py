"""A spec resolved to the policy's :class:`~hlrp_ladder.search.state.Plan`: sizes in bytes against the memory the
probes can really use. A run stores its plan in ``ladder.json`` when it starts; reports and resumes read that,
never the spec resolved again (on another machine the percentages would mean something else)."""
from __future__ import annotations

from hlrp_ladder.search.state import Plan
from hlrp_ladder.spec.model import Spec
from hlrp_ladder.spec.sections import GpuMemory


def resolve(spec: Spec, total: int) -> Plan:
    """The policy's view of ``spec``, its sizes resolved against ``total`` bytes."""
    memory = spec.memory
    limit, name = memory.fit_limit(total)
    recipe = ""
    if spec.stress is not None:
        st = spec.stress
        recipe = f"{st.max_steps} steps, validation every {st.check_interval} over {st.limit_batches} batches"
    night = spec.overnight
    return Plan(batch_sizes=spec.batch_sizes, refine=spec.refine, granularity=spec.granularity, repeats=spec.repeats,
                retries=spec.retries, stress=spec.stress is not None, stress_recipe=recipe,
                forecast_required=night is not None and bool(night.max_steps or night.hours),
                limit_bytes=limit, limit_name=name, headroom_bytes=memory.headroom_bytes(total),
                rss_limit_bytes=memory.rss_limit_bytes(total), cap_bytes=memory.cap_bytes(total),
                stress_weight=round(spec.stress.max_steps / spec.probe.max_steps, 2) if spec.stress else 6.0,
                gpu_headroom=(spec.memory.gpu or GpuMemory()).headroom, gpu_judged=True)

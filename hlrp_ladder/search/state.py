"""The policy's vocabulary: what a plan, a rung and a verdict are, the finished records of each probe slot and
where each stands, and the peak a record is judged by. Pure."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Iterable, Optional

from hlrp_ladder.records import SEARCH_PHASES, Outcome, Phase, ProbeRecord
from hlrp_ladder.util import sizes

EXIT_PICK, EXIT_USAGE, EXIT_NO_STABLE, EXIT_BLOCKED, EXIT_INCONCLUSIVE, EXIT_NO_SPACE, EXIT_INTERRUPTED = \
    0, 2, 3, 4, 5, 6, 130


@dataclass(frozen=True)
class Rung:
    batch_size: int
    phase: Phase = Phase.ladder
    repeat: int = 0
    retry: int = 0              # 1.. for the retries of an inconclusive probe


@dataclass(frozen=True)
class Plan:
    """What the policy needs from a spec, with sizes already resolved to bytes (stored in ``ladder.json`` when
    the run starts, so a report judges with the numbers the run used)."""
    batch_sizes: list[int]
    refine: str = "none"
    granularity: int = 4
    repeats: int = 1
    retries: int = 1
    stress: bool = False
    stress_recipe: str = ""          # for the reason sentence, e.g. "220 steps, validation every 50 over 2 batches"
    forecast_required: bool = False  # the spec names a long run: a stress pick needs a forecast that fits
    limit_bytes: Optional[int] = None
    limit_name: str = "cap"
    headroom_bytes: int = 0
    rss_limit_bytes: Optional[int] = None
    cap_bytes: Optional[int] = None
    stress_weight: float = 6.0       # how much longer a stress probe runs than a one-val one (for scheduling)
    gpu_headroom: Optional[str] = "2GiB"  # memory.gpu.headroom, as written: a size, or a % of each record's GPU
                                     # limit (GPU limits resolve on the node a probe ran on: see Limits)
    gpu_judged: bool = False         # the run judges GPU memory (False: a run started before it could; resumed
                                     # as it began, its probes are not given a GPU limit)

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(data: dict) -> "Plan":
        known = {f.name for f in fields(Plan)}
        return Plan(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Verdict:
    pick: Optional[int]
    reason: str
    exit_code: int
    failed: Optional[ProbeRecord] = None
    confirmed_by: Optional[str] = None
    rejected: list[str] = field(default_factory=list)
    status: str = "done"             # done | inconclusive | unfinished | interrupted

    @property
    def inconclusive(self) -> bool:
        return self.status == "inconclusive"


# ---------------------------------------------------------------------------------------------------- records
Key = tuple[str, int, int]   # (search | repeat | stress, batch size, repeat)


def warmup_cap(plan: Plan) -> Optional[int]:
    """The warm-up's cap: twice the probes' cap, within the soft limit (never below the cap). The warm-up is
    not judged; it exists to leave the libraries and data in the page cache. Under the probes' own cap it is
    squeezed to the cap and the kernel evicts that cache again (measured on SLURM: a warm-up at the cap left
    bs=8 charged 1.23 GiB, bs=12 0.97 GiB), so the first counted probe paid the cold-cache charge anyway."""
    if plan.cap_bytes is None:
        return None
    room = plan.rss_limit_bytes if plan.rss_limit_bytes is not None else 2 * plan.cap_bytes
    return max(plan.cap_bytes, min(2 * plan.cap_bytes, room))


def _key(rec: ProbeRecord) -> Key:
    return ("search" if rec.phase in SEARCH_PHASES else rec.phase, rec.batch_size, rec.repeat)


NOT_RUN = (Outcome.interrupted, Outcome.cancelled)   # ended without saying anything: run again when needed


def attempts(records: Iterable[ProbeRecord]) -> dict[Key, list[ProbeRecord]]:
    """The finished (not interrupted, not cancelled) records of each probe slot, oldest first (retries after
    the first try)."""
    out: dict[Key, list[ProbeRecord]] = {}
    for rec in sorted(records, key=lambda r: (r.retry, r.started_at, r.attempt)):
        if rec.outcome not in NOT_RUN:
            out.setdefault(_key(rec), []).append(rec)
    return out


def rung_key(item) -> tuple[str, int, int, int]:
    """What matches a rung to its record: (search | repeat | stress, batch size, repeat, retry)."""
    return ("search" if item.phase in SEARCH_PHASES else item.phase, item.batch_size, item.repeat, item.retry)


def latest(records: Iterable[ProbeRecord]) -> dict[Key, ProbeRecord]:
    """The latest finished record of each probe slot."""
    return {key: tries[-1] for key, tries in attempts(records).items()}


@dataclass(frozen=True)
class Standing:
    """Where one probe slot stands after its tries: missing | ok | memory | retry (run try ``retry`` next) |
    inconclusive."""
    state: str
    record: Optional[ProbeRecord] = None
    retry: int = 0


def standing(plan: Plan, tries: list[ProbeRecord]) -> Standing:
    """A probe slot's standing from its tries, oldest first."""
    if not tries:
        return Standing("missing")
    last = tries[-1]
    if last.outcome == Outcome.ok:
        return Standing("ok", last)
    if last.outcome.is_memory_verdict:
        return Standing("memory", last)
    failed = sum(1 for r in tries if not r.outcome.is_memory_verdict and r.outcome != Outcome.ok)
    if failed <= plan.retries:
        return Standing("retry", last, failed)
    return Standing("inconclusive", last)


GPU_FAILURES = (Outcome.cuda_oom, Outcome.gpu_breach)


def failed_on(rec: ProbeRecord) -> Optional[str]:
    """Which memory a memory verdict says ran out: "gpu" (cuda_oom, gpu_breach, a GPU forecast), "host" (the
    kernel's kills, the soft limit, a host forecast), None for a record that is no memory verdict."""
    if not rec.outcome.is_memory_verdict:
        return None
    if rec.outcome in GPU_FAILURES:
        return "gpu"
    if rec.outcome == Outcome.forecast_oom and rec.gpu_forecast is not None and rec.gpu_forecast.fits is False:
        return "gpu"
    return "host"


def gpu_peak(rec: ProbeRecord) -> Optional[int]:
    """The GPU peak a record is judged by: the tree's memory on its busiest device (None: not read)."""
    return rec.peaks.gpu_sampled_bytes


def gpu_headroom(plan: Plan, rec: ProbeRecord) -> int:
    """The GPU headroom for a record: a percentage is of the GPU limit its node resolved."""
    if not plan.gpu_headroom or rec.limits.gpu_fit_bytes is None:
        return 0
    return sizes.resolve(plan.gpu_headroom, rec.limits.gpu_fit_bytes, allow_zero=True)


def fit_peak(rec: ProbeRecord, measure: str = "working set") -> int:
    """The peak that must fit under the limit. Under a cap, with ``measure`` "working set": the cgroup's working
    set (charged memory less its inactive file cache; its sampled peak, plus whatever charge the samples missed)
    where the record has one, else the charged peak; with "charge": the charged peak. Without a cap, the RSS
    high-water mark.

    Why not the charged peak: it counts page cache, which the kernel takes back before it OOM-kills, so it
    grows toward any cap as files are read and sits *at* the cap of a probe that merely cached a lot. Measured
    on the bundled trainer's bs=20 stress probe under 1.25 GiB, fresh clones: charged the whole cap in one run,
    1.19-1.20 GiB in two others; run alone, at the cap for a minute, its working set peaked at 1.21 GiB. Judged
    by the charge, the same rung passed or failed the headroom by what the page cache held.

    The working set is sampled, the charged peak is the kernel's own: a spike between two samples shows in the
    charged peak only. The gap between the charged peak and the largest sampled charge is that spike's least
    size, so it is added back (it is ~0 for a probe that sat at its cap, the case the working set is for)."""
    if rec.limits.cap_bytes is not None and rec.peaks.kernel_bytes is not None:
        ws, kernel = rec.peaks.working_set_sampled_bytes, rec.peaks.kernel_bytes
        if measure != "working set" or ws is None:
            return kernel
        missed = max(0, kernel - (rec.peaks.cgroup_sampled_bytes or kernel))
        return min(kernel, ws + missed)
    if rec.limits.per_rank and rec.peaks.ranks:  # each rank against the limit: the worst rank's peak
        return max(r.rss_bytes for r in rec.peaks.ranks.values())
    return max(rec.peaks.sampled_rss_bytes, rec.peaks.vmhwm_bytes or 0, rec.peaks.sampled_pss_bytes or 0)

"""One watcher for all of a run's SLURM jobs (submitit's shape): every live job's state from one ``squeue`` call per
poll, at most one poll a second, backing off to 30 s while nothing changes; and, for the jobs that ended or left
the controller's view (purged after ``MinJobAge``), ``sacct`` in one call, where accounting exists.

Why a watcher and not one ``scontrol show job`` per job and second: on a real cluster a compare matrix is tens to
hundreds of jobs, and one controller RPC per job and second from one user is what admins throttle and ban. The
cadence is a pure function (:func:`interval`) tested without a cluster; a handle's end is usually seen sooner
through the runner's record on the shared filesystem (the handle then :meth:`Watcher.nudge`\\ s the watcher, which
asks again within a second), so backing off costs a probe that ends without a record at most ``max_s`` of latency.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from hlrp_ladder.executors.slurm import commands
from hlrp_ladder.executors.slurm.commands import Job, SlurmError

MIN_S = 1.0        # at most one poll a second, however many jobs
MAX_S = 30.0       # and at least one every 30 s while any job is live
BACKOFF = 0.1      # the wait grows with the time nothing changed: 100 s quiet -> 10 s, 300 s -> 30 s
ACCOUNTING_TRIES = 5  # polls to wait for slurmdbd to record a job's end the controller already reports


def interval(now: float, changed_at: list[float], unanswered: bool, min_s: float = MIN_S,
             max_s: float = MAX_S) -> float:
    """Seconds between two polls: ``min_s`` while a job was never answered about or has just changed (or was
    nudged), then a tenth of the time the liveliest job has been quiet, up to ``max_s``."""
    if unanswered or not changed_at:
        return min_s
    quiet = now - max(changed_at)
    return min(max_s, max(min_s, quiet * BACKOFF))


@dataclass
class Entry:
    """What the watcher knows of one job."""
    job_id: str
    changed_at: float                  # monotonic: registered, its state changed, or nudged
    job: Optional[Job] = None          # the controller's view, completed by accounting's once it ended
    answered: bool = False             # a poll since it was registered answered about it (if only: unknown)
    settled: bool = False              # ended (or gone) and accounting had its say: never asked about again
    gone: bool = False                 # settled with neither the controller nor accounting knowing the job
    accounting_tries: int = 0


@dataclass
class Watcher:
    """The job states of one orchestrator's jobs, shared by all its handles. ``job()`` is cheap: it returns the
    cached state and polls only when the cadence says so."""
    min_s: float = MIN_S
    max_s: float = MAX_S
    clock: Callable[[], float] = time.monotonic
    entries: dict[str, Entry] = field(default_factory=dict)
    polls: int = 0                     # squeue calls made (for the bench and the tests)
    failures: int = 0                  # squeue calls failed in a row (the cadence backs off on them)
    accounting_calls: int = 0          # sacct calls made
    last_error: str = ""               # the last failed call's line ("" when the last poll answered)
    accounting_error: str = ""         # sacct's last failure ("" when it answered)
    _polled_at: float = float("-inf")
    _accounting: Optional[str] = None  # AccountingStorageType, read once ("" where the controller did not say)

    def register(self, job_id: str) -> Entry:
        entry = self.entries.get(job_id)
        if entry is None:
            entry = self.entries[job_id] = Entry(job_id, self.clock())
        return entry

    def forget(self, job_id: str) -> None:
        self.entries.pop(job_id, None)

    def nudge(self, job_id: str) -> None:
        """Something changed that SLURM will show soon (the runner wrote its record, we cancelled): ask again
        within ``min_s``."""
        entry = self.entries.get(job_id)
        if entry is not None and not entry.settled:
            entry.changed_at = self.clock()

    def entry(self, job_id: str) -> Entry:
        self.refresh()
        return self.register(job_id)

    def job(self, job_id: str) -> Optional[Job]:
        return self.entry(job_id).job

    def cached(self, job_id: str) -> Optional[Job]:
        """The last known state, without polling."""
        entry = self.entries.get(job_id)
        return entry.job if entry is not None else None

    def due(self) -> bool:
        live = [e for e in self.entries.values() if not e.settled]
        if not live:
            return False
        wait = interval(self.clock(), [e.changed_at for e in live], any(not e.answered for e in live),
                        self.min_s, self.max_s)
        if self.failures:  # a controller that does not answer is asked less and less often, not every second
            wait = min(self.max_s, max(wait, self.min_s * 2 ** min(self.failures, 8)))
        return self.clock() - self._polled_at >= wait

    def refresh(self) -> None:
        if self.due():
            self.update()

    def update(self) -> None:
        """One poll: ``squeue`` for every live job, then ``sacct`` once for those that ended or left the
        controller's view. A call that fails keeps the last states (and says why in ``last_error``)."""
        self._polled_at = self.clock()
        live = [e for e in self.entries.values() if not e.settled]
        if not live:
            return
        self.polls += 1
        try:
            seen = commands.queue([e.job_id for e in live])
        except SlurmError as exc:
            self.failures += 1
            self.last_error = str(exc)
            return
        self.failures, self.last_error = 0, ""
        now = self.clock()
        for entry in live:
            job = seen.get(entry.job_id)
            if job is not None and job != entry.job:
                entry.changed_at = now
            if job is not None:
                entry.job = job
            entry.answered = True
        ended = [e for e in live if e.job_id not in seen or seen[e.job_id].terminal]
        if not ended:
            return
        accounted, failed = self._accounting_of([e.job_id for e in ended])
        for entry in ended:
            self._settle(entry, seen.get(entry.job_id), accounted, failed)

    def accounting(self) -> str:
        """The cluster's AccountingStorageType ('accounting_storage/slurmdbd', '.../none'; '' while unknown)."""
        if self._accounting is None:
            try:
                self._accounting = commands.config().get("AccountingStorageType", "")
            except SlurmError:
                return ""
        return self._accounting

    def has_accounting(self) -> bool:
        """False only where the controller says there is none; unknown counts as maybe (sacct is tried)."""
        return not self.accounting().endswith("/none")

    def _accounting_of(self, job_ids: list[str]) -> tuple[Optional[dict[str, Job]], bool]:
        """sacct's view of ``job_ids`` in one call, and whether it failed: (None, False) without accounting,
        (None, True) when sacct did not answer (slurmdbd restarting, say: asked again, a few polls at most)."""
        if not self.has_accounting():
            return None, False
        self.accounting_calls += 1
        try:
            found = commands.accounting(job_ids)
        except SlurmError as exc:
            self.accounting_error = str(exc)
            return None, True
        self.accounting_error = ""
        return found, False

    def _settle(self, entry: Entry, controller: Optional[Job], accounted: Optional[dict[str, Job]],
                failed: bool) -> None:
        entry.accounting_tries += 1
        booked = None if accounted is None else accounted.get(entry.job_id)
        entry.job, entry.settled = combine(controller, booked, accounted is not None, entry.accounting_tries, failed)
        entry.gone = entry.job is None
        if not entry.settled and entry.accounting_tries == 1:
            entry.changed_at = self.clock()  # ask again soon; the tries that follow back off as usual


def combine(controller: Optional[Job], booked: Optional[Job], asked: bool, tries: int,
            failed: bool = False) -> tuple[Optional[Job], bool]:
    """A job that ended or left the controller's view: what is known of it (None: nothing) and whether that is
    final. ``controller``: squeue's view (None once purged); ``booked``: sacct's (None without accounting, or
    when it has no record); ``asked``: sacct answered; ``failed``: sacct was asked and did not answer; ``tries``:
    polls since the job ended. Nothing waits more than ACCOUNTING_TRIES polls."""
    enough = tries >= ACCOUNTING_TRIES
    if controller is None:
        if booked is None:
            # purged: accounting does not know it, or there is none: nothing more will come (unless sacct failed)
            return None, not failed or enough
        # the controller forgot it, so it is not running whatever accounting says (a runaway job in slurmdbd):
        # final once accounting says it ended, or after a few polls
        return booked, booked.terminal or enough
    if booked is not None and booked.terminal:
        return controller.with_accounting(booked), True
    # the controller says it ended; slurmdbd records the end a moment later: ask again, a few polls at most
    return controller, (not asked and not failed) or enough

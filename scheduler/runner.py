"""Running jobs: once (`jobs run`), or on schedule by the one active scheduler process.

Exactly one scheduler is active: it holds a lease row in the database and renews it; a second
process waits as a standby and takes the lease over when it lapses. The lease is fenced:

- Its expiry is set and compared in the database's time (PostgreSQL's clock), so clocks of the
  hosts do not matter. Every takeover raises the lease's `generation`.
- A job run by the scheduler commits only if, right before its commit and in its transaction, the
  lease still names this activation (holder and generation) and has not expired; otherwise its
  writes are rolled back, the run is recorded as failed ("lease lost") and the process stands down.
  `jobs run` from the command line is not fenced: a person ran it on purpose.
- A scheduler that cannot renew (the database away or slow, or the renewal refused) stands down
  once its lease may have lapsed by its own monotonic clock, and waits as a standby again.
- On start and on takeover the new active process closes the runs its predecessors left
  `running` (they died, or can no longer commit) and runs every job that missed a fire time
  (`due_for_catch_up`) before the schedule proceeds.

On SQLite the whole file has one writer: while a job's transaction writes, the renewals wait. A job
whose writes take longer than the lease therefore loses it (and is rolled back); there, keep
SCHEDULER_LEASE_SECONDS above the longest job's writing time.

The lease, the outbox flush and the heartbeat intervals (SCHEDULER_LEASE_SECONDS, OUTBOX_FLUSH_SECONDS,
SCHEDULER_HEARTBEAT_SECONDS) and each job's schedule come from the service's settings.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import DateTime, Interval, case, delete, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from core.render import render
from models.errors import error_code, log_failure
from models.schema import JobRun, Lease
from models.service import Service
from scheduler.jobs import scheduled_jobs
from scheduler.registry import JOBS, Job, JobContext

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
KEEP_RUNS_DAYS = 60
LEASE_LOST = render("errors/job_lease_lost.txt")  # a run's result, as `jobs list` shows it
DIED = render("errors/job_died.txt")
# A scheduler's runs carry its holder id (host:pid:hex); `jobs run` runs carry host:pid.
_SCHEDULER_HOST = re.compile(r".+:\d+:[0-9a-f]{6}")


def holder_id() -> str:
    """A fresh id for one activation of one process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _aware(value: datetime | None, tz: ZoneInfo) -> datetime | None:
    """A stored time as an aware datetime (SQLite hands back the naive wall time it was given)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=tz)


# ── the lease ────────────────────────────────────────────────────────────────

def _db_now(session: Session, tz: ZoneInfo) -> ColumnElement[datetime]:
    """The database's clock. PostgreSQL: the server's `clock_timestamp()`, so every host compares
    against the same clock. SQLite is embedded: every process using the file runs on the same
    machine, so the process's clock is the database's clock (stored, as before, as wall time in
    APP_TIMEZONE)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.clock_timestamp()
    return literal(datetime.now(tz), DateTime(timezone=True))


def _expiry(session: Session, tz: ZoneInfo, seconds: float) -> ColumnElement[datetime]:
    if session.get_bind().dialect.name == "postgresql":
        return func.clock_timestamp() + literal(timedelta(seconds=seconds), Interval())
    return literal(datetime.now(tz) + timedelta(seconds=seconds), DateTime(timezone=True))


def try_lease(service: Service, holder: str, seconds: float | None = None) -> int | None:
    """Take or renew the scheduler lease in one statement: the generation now held, or None while
    another live process holds it. A takeover (a holder different from the row's) raises the
    generation; a renewal keeps it. `seconds`: SCHEDULER_LEASE_SECONDS unless given."""
    if seconds is None:
        seconds = service.settings.scheduler_lease_seconds
    with service.sessions() as session:
        generation = session.scalar(
            update(Lease)
            .where(Lease.name == LEASE_NAME,
                   or_(Lease.holder == holder, Lease.expires_at < _db_now(session, service.tz)))
            .values(holder=holder, expires_at=_expiry(session, service.tz, seconds),
                    generation=case((Lease.holder == holder, Lease.generation), else_=Lease.generation + 1))
            .returning(Lease.generation))
        if generation is not None:
            session.commit()
            return generation
        if session.get(Lease, LEASE_NAME) is not None:
            return None
        try:
            session.execute(insert(Lease).values(name=LEASE_NAME, holder=holder, generation=1,
                                                 expires_at=_expiry(session, service.tz, seconds)))
            session.commit()
            return 1
        except IntegrityError:
            session.rollback()
            return None


def release_lease(service: Service, holder: str) -> None:
    """Let the lease lapse now, if `holder` still holds it (a standby takes over at once)."""
    with service.sessions() as session:
        session.execute(update(Lease).where(Lease.name == LEASE_NAME, Lease.holder == holder)
                        .values(expires_at=_expiry(session, service.tz, -1)))
        session.commit()


def lease_still_held(session: Session, tz: ZoneInfo, holder: str, generation: int) -> bool:
    """In `session`'s transaction, right before its commit: does the lease still name this holder and
    generation, unexpired? The lease row stays locked until the commit, so no takeover can come
    between this check and the commit: PostgreSQL locks the row FOR SHARE (a takeover's UPDATE
    waits for our commit); on SQLite a no-op write takes the database's write lock."""
    if session.get_bind().dialect.name == "postgresql":
        row = session.execute(
            select(Lease.holder, Lease.generation, Lease.expires_at > func.clock_timestamp())
            .where(Lease.name == LEASE_NAME).with_for_update(read=True)).one_or_none()
        return row is not None and row[0] == holder and row[1] == generation and bool(row[2])
    touched = session.execute(
        update(Lease).where(Lease.name == LEASE_NAME, Lease.holder == holder, Lease.generation == generation,
                            Lease.expires_at > _db_now(session, tz))
        .values(generation=Lease.generation)).rowcount
    return touched == 1


class SchedulerLease:
    """One activation's hold on the lease: its holder id, the generation it took, and when (by this
    process's monotonic clock) a renewal last succeeded. `lost` is set once it must stand down."""

    def __init__(self, service: Service, seconds: float | None = None, holder: str | None = None) -> None:
        self.service = service
        self.seconds = service.settings.scheduler_lease_seconds if seconds is None else seconds
        self.holder = holder or holder_id()
        self.generation: int | None = None
        self.lost = threading.Event()
        self._renewed: float | None = None

    @property
    def interval(self) -> float:
        """How often the active process renews: three tries within one lease."""
        return max(0.2, self.seconds / 3)

    def acquire(self) -> bool:
        """Take the lease, or renew it. A renewal that comes back with another generation (the lease
        was taken over and given back meanwhile) or is refused means this activation is over."""
        sent = time.monotonic()  # the database sets the expiry after this instant: a safe lower bound
        generation = try_lease(self.service, self.holder, self.seconds)
        if generation is None or (self.generation is not None and generation != self.generation):
            if self.generation is not None:
                self.lose()
            return False
        self.generation = generation
        self._renewed = sent
        return True

    @property
    def held(self) -> bool:
        """Held as far as this process can tell: taken, not lost, renewed less than a lease ago."""
        return (self.generation is not None and not self.lost.is_set() and self._renewed is not None
                and time.monotonic() - self._renewed < self.seconds)

    def lose(self) -> None:
        self.lost.set()

    def fence(self, session: Session, generation: int) -> bool:
        """May a job started under `generation` commit now? Checked in its transaction."""
        return (self.held and self.generation == generation
                and lease_still_held(session, self.service.tz, self.holder, generation))


class LeaseLost(Exception):
    """The lease changed hands (or lapsed) while a job ran: its writes are rolled back."""


# ── running a job ────────────────────────────────────────────────────────────

def run_job(service: Service, name: str, now: datetime | None = None,
            lease: SchedulerLease | None = None) -> JobRun:
    """Run one job once, as if the clock read `now`; its writes commit together, its run is logged.

    With `lease` (the scheduler), the writes commit only while that lease is still held with the
    generation the run started under; otherwise nothing is committed, the run is recorded as failed
    and the lease marked lost. Without it (`jobs run`), the run is not fenced."""

    job = JOBS[name]
    now = (now or service.now()).astimezone(service.tz)
    generation = lease.generation if lease is not None else None
    host = lease.holder if lease is not None else f"{socket.gethostname()}:{os.getpid()}"
    started = time.perf_counter()
    with service.sessions() as session:
        run = JobRun(job=name, as_of=now, host=host)
        session.add(run)
        session.commit()
        ctx = JobContext(session, now, service.catalogue, service.settings)
        try:
            result = job.func(ctx)
            if lease is not None and (generation is None or not lease.fence(session, generation)):
                raise LeaseLost
            session.commit()
            run.status, run.result = "ok", result
        except LeaseLost:
            session.rollback()
            log.warning("job %s: the scheduler lease changed hands; nothing committed, standing down", name)
            run.status, run.result = "error", LEASE_LOST
            lease.lose()
        except Exception as exc:  # a job's failure is logged and shown by `jobs list`
            session.rollback()
            # By type and code only: the message may quote what the job was working on (names, values).
            log_failure(log, f"job {name} failed", exc)
            run.status, run.result = "error", f"error: {error_code(exc)}"
        run.finished_at = datetime.now(now.tzinfo)
        session.add(run)
        session.commit()
        # One line per run; its result carries keys and counts only (each job's `line`).
        log.info("job name=%s run=%d status=%s ms=%.0f result=%s", name, run.id, run.status,
                 (time.perf_counter() - started) * 1000, run.result)
        return run


def last_runs(service: Service) -> dict[str, JobRun]:
    """The newest run of each job."""

    out: dict[str, JobRun] = {}
    with service.sessions() as session:
        for name in [*JOBS, "heartbeat"]:
            run = session.scalar(select(JobRun).where(JobRun.job == name).order_by(JobRun.id.desc()).limit(1))
            if run is not None:
                out[name] = run
    return out


# ── takeover: dead runs and catch-up ─────────────────────────────────────────

def close_dead_runs(service: Service, holder: str) -> list[JobRun]:
    """Close as failed every scheduler run still `running` under another holder id. Called by the
    process that has just taken the lease: whoever ran them no longer holds it, so their writes can
    never commit (fenced): the process died, or its commit will be refused. Runs of `jobs run`
    (host:pid, no holder suffix) are left alone: a person may still be running one."""
    with service.sessions() as session:
        runs = session.scalars(select(JobRun).where(JobRun.status == "running", JobRun.host != holder)).all()
        dead = [run for run in runs if run.host and _SCHEDULER_HOST.fullmatch(run.host)]
        for run in dead:
            run.status, run.result, run.finished_at = "error", DIED, datetime.now(service.tz)
        session.commit()
    for run in dead:
        log.warning("closed run #%d of %s left running by %s as failed (died)", run.id, run.job, run.host)
    return dead


def previous_fire_time(trigger: BaseTrigger, now: datetime) -> datetime | None:
    """The latest time ≤ `now` at which `trigger` fired (within four years), else None."""
    for days in (1, 8, 32, 367, 1462):
        fire = trigger.get_next_fire_time(None, now - timedelta(days=days))
        if fire is None or fire > now:
            continue
        while (following := trigger.get_next_fire_time(None, fire + timedelta(seconds=1))) is not None \
                and following <= now:
            fire = following
        return fire
    return None


def scheduler_known_since(session: Session, tz: ZoneInfo) -> datetime | None:
    """When the scheduler was first seen running, as far as the kept runs tell (its heartbeats)."""
    return _aware(session.scalar(select(func.min(JobRun.as_of)).where(JobRun.job == "heartbeat")), tz)


def due_for_catch_up(session: Session, now: datetime, tz: ZoneInfo,
                     jobs: Mapping[str, Job] | None = None) -> list[str]:
    """The jobs that missed their previous fire time, in the order they should have run.

    A job is due when its previous fire time (the latest ≤ `now`) is later than its last successful
    run (`as_of` of a run with status ok): a Monday digest missed because no scheduler was up is
    sent on Tuesday's start. A run that failed or died does not count.

    Only fire times since the scheduler was first seen running (its earliest heartbeat) are caught
    up. A brand-new install therefore starts clean instead of running every job at once, and a job
    whose last run was pruned with old history (KEEP_RUNS_DAYS) is not run again for a fire time
    older than that history: we cannot tell whether it ran. A job that has never run is caught up
    like any other once its fire time falls after that first start. `jobs`: with their schedules
    from the settings (`scheduled_jobs`); the default schedules unless given."""

    since = scheduler_known_since(session, tz)
    if since is None:
        return []
    last_ok = {name: _aware(at, tz) for name, at in session.execute(
        select(JobRun.job, func.max(JobRun.as_of)).where(JobRun.status == "ok").group_by(JobRun.job))}
    due: list[tuple[datetime, int, str]] = []
    for order, job in enumerate((JOBS if jobs is None else jobs).values()):
        fire = previous_fire_time(job.trigger(str(tz)), now)
        if fire is None or fire < since:
            continue
        ok = last_ok.get(job.name)
        if ok is None or ok < fire:
            due.append((fire, order, job.name))
    return [name for _, _, name in sorted(due)]


def catch_up(service: Service, lease: SchedulerLease, stop: threading.Event | None = None) -> list[JobRun]:
    """Run now, once each and in order, every job that missed a fire time; stop early if the lease
    is lost or the process is stopping."""
    with service.sessions() as session:
        due = due_for_catch_up(session, service.now(), service.tz, scheduled_jobs(service.settings))
    runs: list[JobRun] = []
    for name in due:
        if not lease.held or (stop is not None and stop.is_set()):
            break
        log.info("catching up %s (missed its last fire time)", name)
        runs.append(run_job(service, name, lease=lease))
    return runs


# ── the scheduler process ────────────────────────────────────────────────────

def _flush_outbox(service: Service) -> None:
    """Deliver what is due, after the early-warning check of recordings no web worker got to and
    the 本周概况 a callback could not wait for. A failure is logged here, by type and code (APScheduler
    would log the exception's message, which may quote a recipient or a value), and tried again at the
    next interval."""
    try:
        _deliver_due(service)
    except Exception as exc:  # noqa: BLE001 - the rows stay where they are for the next flush
        log_failure(log, "outbox flush failed", exc)


def _deliver_due(service: Service) -> None:
    from scheduler.delivery import make_deliverer
    from scheduler.digest_jobs import answer_overview_requests

    evaluated = service.evaluate_queued()
    if evaluated.recordings:
        log.info("early-warning check of %d queued recordings", evaluated.recordings)
    answered = answer_overview_requests(service.sessions, service.catalogue, service.today(), service.tz,
                                        service.rules(), service.settings)
    if answered:
        log.info("本周概况: %d requests answered", answered)
    report = make_deliverer(service).flush()
    if report.calls or report.failed or report.deferred:
        log.info("outbox: %s", report.summary())


def heartbeat(service: Service, lease: SchedulerLease) -> None:
    """Log that the active scheduler is alive (shown by `jobs list`), and prune old runs."""
    if not lease.held:
        return
    now = datetime.now(service.tz)
    with service.sessions() as session:
        session.add(JobRun(job="heartbeat", as_of=now, finished_at=now, status="ok", result=lease.holder,
                           host=lease.holder))
        session.execute(delete(JobRun).where(JobRun.started_at < now - timedelta(days=KEEP_RUNS_DAYS)))
        session.commit()


def build_scheduler(service: Service, lease: SchedulerLease, since: datetime | None = None) -> BackgroundScheduler:
    """APScheduler with every job (fixed ids, coalesced, one instance, run late rather than skipped),
    fenced by `lease`, plus outbox delivery and the heartbeat. Each job's first run is its first fire
    time after `since` (when the catch-up began), so a fire time passed during the catch-up runs too.
    Schedules and intervals are the service's settings."""
    settings = service.settings
    tz = settings.timezone
    sched = BackgroundScheduler(timezone=tz,
                                job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
    for job in scheduled_jobs(settings).values():
        trigger = job.trigger(tz)
        first = trigger.get_next_fire_time(None, since) if since is not None else None
        sched.add_job(run_job, trigger, args=[service, job.name], kwargs={"lease": lease},
                      id=job.name, name=job.description, replace_existing=True,
                      **({"next_run_time": first} if first is not None else {}))
    sched.add_job(_flush_outbox, IntervalTrigger(seconds=settings.outbox_flush_seconds), args=[service],
                  id="outbox_flush")
    sched.add_job(heartbeat, IntervalTrigger(seconds=settings.scheduler_heartbeat_seconds), args=[service, lease],
                  id="heartbeat")
    return sched


def _keep_lease(lease: SchedulerLease, done: threading.Event) -> None:
    """Renew every third of the lease. A refused renewal ends the activation at once; a failed one
    (the database away) is tried again, and the monitor stands down once the lease may have lapsed."""
    while not done.wait(lease.interval):
        try:
            if not lease.acquire():
                log.warning("the scheduler lease was taken over; standing down")
                return
        except SQLAlchemyError as exc:
            log.warning("could not renew the scheduler lease (%s)", type(exc).__name__)


class _Activation:
    """One period as the active scheduler: renew, close dead runs, catch up, then run the schedule."""

    def __init__(self, service: Service, lease: SchedulerLease, stop: threading.Event) -> None:
        self.service, self.lease, self.stop = service, lease, stop
        self.done = threading.Event()  # stops the renewals
        self.closing = False  # set under `guard` once this activation ends, for whatever reason
        self.sched: BackgroundScheduler | None = None
        self.guard = threading.Lock()

    def work(self) -> None:
        service, lease = self.service, self.lease
        try:
            close_dead_runs(service, lease.holder)
            heartbeat(service, lease)
            started = service.now()
            catch_up(service, lease, self.stop)
            with self.guard:
                if self.closing or not lease.held:
                    return
                self.sched = build_scheduler(service, lease, started)
                self.sched.start()
        except Exception as exc:  # the database went away, say: stand down, and start over as a standby
            log_failure(log, "scheduler start-up failed; standing down", exc)
            lease.lose()

    def run(self) -> None:
        """Until stopped (then finish the running job and let the lease go) or until the lease may
        have lapsed or was lost (then stop running jobs at once)."""
        keeper = threading.Thread(target=_keep_lease, args=(self.lease, self.done), daemon=True)
        worker = threading.Thread(target=self.work, daemon=True)
        keeper.start()
        worker.start()
        while not self.stop.is_set() and self.lease.held:
            self.stop.wait(min(0.25, self.lease.interval))
        stopping = self.stop.is_set() and not self.lease.lost.is_set()
        if not stopping:
            self.lease.lose()
            log.warning("the scheduler lease was lost or may have lapsed; standing down")
        with self.guard:
            self.closing = True
            sched = self.sched
        if not stopping:
            self.done.set()
            if sched is not None:
                sched.shutdown(wait=False)  # a job still running cannot commit: fenced
            return
        worker.join()  # renewals go on while the running job finishes
        if sched is not None:
            sched.shutdown(wait=True)
        self.done.set()
        try:
            release_lease(self.service, self.lease.holder)
        except SQLAlchemyError as exc:
            log.warning("could not release the scheduler lease (%s)", type(exc).__name__)


def run_scheduler(service: Service, stop: threading.Event | None = None, lease_seconds: float | None = None) -> None:
    """Wait as a standby until the lease is ours, then be the active scheduler until stopped; after
    standing down (the lease lost or unrenewable), wait as a standby again. `lease_seconds`:
    SCHEDULER_LEASE_SECONDS unless given."""
    stop = stop or threading.Event()
    announced = False
    lease = SchedulerLease(service, lease_seconds)
    while not stop.is_set():
        try:
            leased = lease.acquire()
        except SQLAlchemyError as exc:  # the database busy or away: keep trying
            log.warning("could not check the scheduler lease (%s); trying again", type(exc).__name__)
            leased = False
        if leased:
            log.info("scheduler active as %s (lease generation %d)", lease.holder, lease.generation)
            _Activation(service, lease, stop).run()
            if stop.is_set():
                return
            log.info("waiting as a standby")
            lease = SchedulerLease(service, lease_seconds)  # a new holder id: a new generation when taken
            announced = True
        elif not announced:
            log.info("another scheduler is active; waiting as a standby")
            announced = True
        stop.wait(lease.interval)

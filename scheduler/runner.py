"""Running jobs: once (`jobs run`), or on schedule by the one active scheduler process.

Exactly one scheduler is active: it holds a lease row in the database and renews
it; a second process waits as a standby and takes over when the lease lapses.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from bot.service import Service
from models.schema import JobRun, Lease
from scheduler.registry import JOBS, JobContext

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


LEASE_S = _int_env("SCHEDULER_LEASE_SECONDS", 30)
OUTBOX_FLUSH_S = _int_env("OUTBOX_FLUSH_SECONDS", 60)
HEARTBEAT_S = _int_env("SCHEDULER_HEARTBEAT_SECONDS", 300)
KEEP_RUNS_DAYS = 60


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def run_job(service: Service, name: str, now: datetime | None = None) -> JobRun:
    """Run one job once, as if the clock read `now`; its writes commit together, its run is logged."""
    import scheduler.jobs  # noqa: F401  (registers every job)

    job = JOBS[name]
    now = now or service.now()
    with service.sessions() as session:
        run = JobRun(job=name, as_of=now, host=f"{socket.gethostname()}:{os.getpid()}")
        session.add(run)
        session.commit()
        ctx = JobContext(session=session, now=now, catalogue=service.catalogue,
                         public_base_url=service.settings.public_base_url)
        try:
            result = job.func(ctx)
            session.commit()
            run.status, run.result = "ok", result
        except Exception as exc:  # a job's failure is logged and shown by `jobs list`
            session.rollback()
            log.exception("job %s failed", name)
            run.status, run.result = "error", f"{type(exc).__name__}: {exc}"
        run.finished_at = datetime.now(now.tzinfo)
        session.add(run)
        session.commit()
        return run


def last_runs(service: Service) -> dict[str, JobRun]:
    """The newest run of each job."""
    import scheduler.jobs  # noqa: F401

    out: dict[str, JobRun] = {}
    with service.sessions() as session:
        for name in [*JOBS, "heartbeat"]:
            run = session.scalar(select(JobRun).where(JobRun.job == name).order_by(JobRun.id.desc()).limit(1))
            if run is not None:
                out[name] = run
    return out


def try_lease(service: Service, holder: str, seconds: int = LEASE_S) -> bool:
    """Take or renew the scheduler lease; False while another live process holds it."""
    now = datetime.now(service.tz)
    expires = now + timedelta(seconds=seconds)
    with service.sessions() as session:
        taken = session.execute(
            update(Lease)
            .where(Lease.name == LEASE_NAME, (Lease.holder == holder) | (Lease.expires_at < now))
            .values(holder=holder, expires_at=expires)
        ).rowcount
        if taken:
            session.commit()
            return True
        if session.get(Lease, LEASE_NAME) is not None:
            return False
        try:
            session.execute(insert(Lease).values(name=LEASE_NAME, holder=holder, expires_at=expires))
            session.commit()
            return True
        except IntegrityError:
            session.rollback()
            return False


def release_lease(service: Service, holder: str) -> None:
    with service.sessions() as session:
        session.execute(update(Lease).where(Lease.name == LEASE_NAME, Lease.holder == holder)
                        .values(expires_at=datetime.now(service.tz) - timedelta(seconds=1)))
        session.commit()


def _flush_outbox(service: Service) -> None:
    """Deliver what is due, after the early-warning check of recordings no web worker got to."""
    from scheduler.delivery import make_deliverer

    evaluated = service.evaluate_queued()
    if evaluated.recordings:
        log.info("early-warning check of %d queued recordings", evaluated.recordings)
    report = make_deliverer(service).flush()
    if report.calls or report.failed or report.deferred:
        log.info("outbox: %s", report.summary())


def heartbeat(service: Service, holder: str) -> None:
    """Log that the active scheduler is alive (shown by `jobs list`), and prune old runs."""
    now = datetime.now(service.tz)
    with service.sessions() as session:
        session.add(JobRun(job="heartbeat", as_of=now, finished_at=now, status="ok", result=holder, host=holder))
        session.execute(delete(JobRun).where(JobRun.started_at < now - timedelta(days=KEEP_RUNS_DAYS)))
        session.commit()


def build_scheduler(service: Service, holder: str, stop: threading.Event) -> BlockingScheduler:
    """APScheduler with every job (fixed ids, coalesce, one instance), plus lease renewal and delivery."""
    import scheduler.jobs  # noqa: F401

    sched = BlockingScheduler(timezone=service.settings.timezone,
                              job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 600})
    for job in JOBS.values():
        sched.add_job(run_job, job.trigger(service.settings.timezone), args=[service, job.name],
                      id=job.name, name=job.description, replace_existing=True)

    def renew() -> None:
        if not try_lease(service, holder):
            log.warning("lost the scheduler lease; standing down")
            stop.set()
            sched.shutdown(wait=False)

    sched.add_job(renew, IntervalTrigger(seconds=max(1, LEASE_S // 3)), id="lease_renew")
    sched.add_job(_flush_outbox, IntervalTrigger(seconds=OUTBOX_FLUSH_S), args=[service], id="outbox_flush")
    sched.add_job(heartbeat, IntervalTrigger(seconds=HEARTBEAT_S), args=[service, holder], id="heartbeat",
                  next_run_time=datetime.now(service.tz))
    return sched


def _shutdown_on(stop: threading.Event, sched: BlockingScheduler) -> None:
    stop.wait()
    if sched.running:
        sched.shutdown(wait=False)


def run_scheduler(service: Service, stop: threading.Event | None = None) -> None:
    """Wait as a standby until the lease is ours, then run the schedule until stopped or the lease is lost."""
    holder = holder_id()
    stop = stop or threading.Event()
    announced = False
    while not stop.is_set():
        try:
            leased = try_lease(service, holder)
        except OperationalError as exc:  # the database busy or away: a standby that died would take over nothing
            log.warning("could not check the scheduler lease (%s); trying again", exc)
            leased = False
        if leased:
            log.info("scheduler active as %s", holder)
            lost = threading.Event()
            sched = build_scheduler(service, holder, lost)
            threading.Thread(target=_shutdown_on, args=(stop, sched), daemon=True).start()
            try:
                sched.start()
            finally:
                if not lost.is_set():
                    release_lease(service, holder)
            if not lost.is_set():
                return
        elif not announced:
            log.info("another scheduler is active; waiting as a standby")
            announced = True
        stop.wait(max(1, LEASE_S // 3))

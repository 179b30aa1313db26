"""Prometheus metrics (`GET /metrics`): what processes counted (core/metrics.py), and what is read
from the database and Redis when the metrics are scraped.

Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before any worker starts, so every
worker writes its counts to files there and a scrape, whichever worker answers it, sums them all
(prometheus-client's multiprocess mode). Without it (`serve`, the console, tests) a process counts
in its own registry.

Labels carry channels, outcomes, states, error codes and job ids: never a person or a text.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import redis
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from core.config import Settings
from core.metrics import DELIVERY_ERRORS_KEY, local_delivery_errors, redis_client
from models.schema import JobRun, OutboxMessage

log = logging.getLogger(__name__)

OUTBOX_STATES = ("pending", "sending", "inflight", "sent", "failed")
WAITING_STATES = ("pending", "sending", "inflight")  # not yet with the person


def multiprocess_mode(settings: Settings) -> bool:
    """True under gunicorn (gunicorn.conf.py): counts live in files shared by the workers."""
    return bool(settings.prometheus_multiproc_dir)


def _epoch(value: datetime | None, tz: ZoneInfo) -> float | None:
    """A stored time as seconds since the epoch; a naive one is read in `tz` (SQLite keeps no zone)."""
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=tz)).timestamp()


class StateCollector(Collector):
    """What is read at scrape time: outbox rows by state and the age of the oldest waiting one, each
    job's last success, delivery errors by errcode. One process's view is everyone's: it is read
    from the database and Redis."""

    def __init__(self, service) -> None:  # noqa: ANN001  (models.service.Service; imported late)
        self.service = service

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("czk_metrics_database_up", "1 when the database answered this scrape")
        try:
            yield from self._from_database()
            up.add_metric([], 1)
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
        yield up
        yield self._delivery_errors()

    def _from_database(self) -> Iterator[Metric]:
        service = self.service
        now = datetime.now(UTC).timestamp()
        with service.sessions() as session:
            counts = dict(session.execute(
                select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all())
            oldest = session.scalar(select(func.min(OutboxMessage.created_at))
                                    .where(OutboxMessage.status.in_(WAITING_STATES)))
            last_ok = session.execute(select(JobRun.job, func.max(JobRun.finished_at))
                                      .where(JobRun.status == "ok").group_by(JobRun.job)).all()
        rows = GaugeMetricFamily("czk_outbox_messages", "Outbox rows by state", labels=["state"])
        for state in (*OUTBOX_STATES, *sorted(set(counts) - set(OUTBOX_STATES))):
            rows.add_metric([state], counts.get(state, 0))
        age = GaugeMetricFamily("czk_outbox_oldest_waiting_age_seconds",
                                "Age of the oldest outbox row not yet delivered (pending, sending or inflight); "
                                "0 when none waits")
        created = _epoch(oldest, UTC)  # created_at is written in UTC
        age.add_metric([], max(0.0, now - created) if created is not None else 0.0)
        jobs = GaugeMetricFamily("czk_job_last_success_timestamp_seconds",
                                 "When each job (and the scheduler's heartbeat) last finished successfully",
                                 labels=["job"])
        for name, finished in sorted(last_ok):
            at = _epoch(finished, service.tz)  # SQLite keeps the wall time in APP_TIMEZONE
            if at is not None:
                jobs.add_metric([name], at)
        return iter((rows, age, jobs))

    def _delivery_errors(self) -> Metric:
        family = CounterMetricFamily("czk_delivery_errors", "Failed WeCom calls of the outbox delivery, by errcode "
                                     "(none: no answer)", labels=["errcode"])
        totals: Tally[str] = Tally()
        totals.update(local_delivery_errors())
        client = redis_client(self.service.settings.redis_url)
        if client is not None:
            try:
                totals.update({k.decode(): int(v) for k, v in client.hgetall(DELIVERY_ERRORS_KEY).items()})
            except redis.RedisError as exc:
                log.warning("metrics: Redis unavailable for delivery errors (%s)", type(exc).__name__)
        for code in sorted(totals):
            family.add_metric([code], totals[code])
        return family


def exposition(service) -> bytes:  # noqa: ANN001
    """The Prometheus text of every metric: this process's or all workers' counts, then the state read
    from the database and Redis."""
    if multiprocess_mode(service.settings):
        from prometheus_client import multiprocess

        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
    else:
        counted = REGISTRY
    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector(service))
    return generate_latest(counted) + generate_latest(state)

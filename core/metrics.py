"""What every layer counts for Prometheus: callback latency, messages by outcome, delivery errors.

A leaf (prometheus_client and redis only): the web (bot/web.py), the pipeline (bot/pipeline.py) and
the outbox delivery (scheduler/delivery.py) record here; bot/metrics.py reads these and the
database's state when /metrics is scraped.

Delivery runs in the scheduler process (another container, maybe another host), so its errors are
counted in Redis (a hash, shared by every process), and in the process itself only when Redis is
not configured or does not answer.

Labels carry channels, outcomes, states, error codes and job ids: never a person or a text.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally

import redis
from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

DELIVERY_ERRORS_KEY = "czk:metrics:delivery_errors"
OUTCOMES = ("ok", "refused", "bad-input", "error", "duplicate")

CALLBACK_SECONDS = Histogram(
    "czk_callback_duration_seconds", "Time to answer a chat callback (WeChat allows 5 s), by channel",
    ["channel"], buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0))
MESSAGES = Counter("czk_messages", "Inbound chat messages handled, by channel and outcome", ["channel", "outcome"])

_local_errors: Tally[str] = Tally()  # delivery errors counted here when Redis is not there
_local_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}


def message_handled(channel: str, outcome: str) -> None:
    """Count one inbound message by channel and outcome (one of OUTCOMES)."""
    MESSAGES.labels(channel=channel, outcome=outcome).inc()


def callback_answered(channel: str, seconds: float) -> None:
    """Observe how long a callback of `channel` took to answer."""
    CALLBACK_SECONDS.labels(channel=channel).observe(seconds)


def redis_client(url: str | None) -> redis.Redis | None:
    """One client per Redis URL, with short time-outs (metrics never hold anything up)."""
    if not url:
        return None
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=0.5)
    return client


def delivery_error(redis_url: str | None, errcode: int | str | None) -> None:
    """Count one failed WeCom call by its errcode ("none": no answer, a time-out or an HTTP error)."""
    code = "none" if errcode is None else str(errcode)
    client = redis_client(redis_url)
    if client is not None:
        try:
            client.hincrby(DELIVERY_ERRORS_KEY, code, 1)
            return
        except redis.RedisError as exc:
            log.warning("Redis unavailable for the delivery error count (%s); counting in this process",
                        type(exc).__name__)
    with _local_lock:
        _local_errors[code] += 1


def local_delivery_errors() -> Tally[str]:
    """The delivery errors this process counted itself (Redis absent or not answering)."""
    with _local_lock:
        return Tally(_local_errors)

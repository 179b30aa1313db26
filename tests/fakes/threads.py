"""Calls released together: the races the tests provoke (WeChat's concurrent retries, processes
refreshing one token)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def at_once(calls: list[Callable[[], T]], timeout: float = 30.0) -> list[T]:
    """Run each call on its own thread, all released by one barrier; the results in the order they
    finished (a call that raised leaves none)."""
    barrier = threading.Barrier(len(calls))
    results: list[T] = []

    def run(call: Callable[[], T]) -> None:
        barrier.wait()
        results.append(call())

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results

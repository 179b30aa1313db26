"""Group commit: recordings that arrive together from a worker's threads share one statement, yet
each caller gets its own outcome, writes to the same subject keep their order, and a group the
database refuses is sorted out item by item (models.db.GroupCommit; on PostgreSQL through the recording
statement in tests/domain/test_evaluation.py)."""

from __future__ import annotations

import threading

from models.db import ConnectionLost, GroupCommit


class Gate:
    """A `run` for GroupCommit that holds its first statement until told, and notes every group."""

    def __init__(self, fail_on: str | None = None, error: type[Exception] = ValueError) -> None:
        self.groups: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on
        self.error = error

    def run(self, items: list[str]) -> list[str]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.started.set()
            assert self.release.wait(5)
        if self.fail_on in items:
            raise self.error(f"refused {self.fail_on}")
        return [item.upper() for item in items]


def submit_while_held(gate: Gate, first: str, rest: list[str], keys=lambda item: {item[0]}):
    """`first` runs and is held; `rest` arrive meanwhile (in order); then all are let go."""
    group = GroupCommit(gate.run, keys)
    outcomes: dict[str, str | Exception] = {}

    def call(item: str) -> None:
        try:
            outcomes[item] = group.submit(item)
        except Exception as exc:  # noqa: BLE001 - what the caller would see
            outcomes[item] = exc

    threads = [threading.Thread(target=call, args=(first,))]
    threads[0].start()
    assert gate.started.wait(5)
    for item in rest:
        t = threading.Thread(target=call, args=(item,))
        t.start()
        threads.append(t)
        while sum(1 for _ in group._queue) < len(threads) - 1:  # queued in this order
            threading.Event().wait(0.001)
    gate.release.set()
    for t in threads:
        t.join(5)
    return outcomes


def test_what_arrives_during_a_statement_runs_as_the_next_one():
    gate = Gate()
    outcomes = submit_while_held(gate, "a1", ["b1", "c1", "d1"])
    assert gate.groups == [["a1"], ["b1", "c1", "d1"]]
    assert outcomes == {"a1": "A1", "b1": "B1", "c1": "C1", "d1": "D1"}


def test_writes_to_the_same_key_never_share_a_statement_and_keep_their_order():
    gate = Gate()
    # keys are the first letter: b2 waits for b1, and c1 (after b2) still passes; b3 follows b2
    outcomes = submit_while_held(gate, "a1", ["b1", "b2", "c1", "b3"])
    assert gate.groups == [["a1"], ["b1", "c1"], ["b2"], ["b3"]]
    assert all(outcomes[k] == k.upper() for k in outcomes)


def test_an_item_that_waits_for_a_key_holds_back_later_items_with_its_other_keys():
    gate = Gate()
    keys = {"a1": {"a"}, "b1": {"b"}, "bc": {"b", "c"}, "c1": {"c"}}
    outcomes = submit_while_held(gate, "a1", ["b1", "bc", "c1"], keys=lambda item: keys[item])
    # "bc" waits for "b1"; "c1" came after "bc", so it may not overtake it on "c"
    assert gate.groups == [["a1"], ["b1"], ["bc"], ["c1"]]
    assert len(outcomes) == 4


def test_a_refused_group_is_run_item_by_item_and_only_the_culprit_fails():
    gate = Gate(fail_on="c1")
    outcomes = submit_while_held(gate, "a1", ["b1", "c1", "d1"])
    assert gate.groups == [["a1"], ["b1", "c1", "d1"], ["b1"], ["c1"], ["d1"]]
    assert outcomes["b1"] == "B1" and outcomes["d1"] == "D1"
    assert isinstance(outcomes["c1"], ValueError)


def test_a_lost_connection_fails_the_whole_group_without_a_retry():
    gate = Gate(fail_on="c1", error=ConnectionLost)
    outcomes = submit_while_held(gate, "a1", ["b1", "c1"])
    assert gate.groups == [["a1"], ["b1", "c1"]]  # nothing is known committed: each caller retries itself
    assert outcomes["a1"] == "A1"
    assert isinstance(outcomes["b1"], ConnectionLost) and isinstance(outcomes["c1"], ConnectionLost)


def test_alone_an_item_runs_at_once():
    runs: list[list[int]] = []
    group = GroupCommit(lambda items: runs.append(items) or [i * 2 for i in items], lambda i: {i})
    assert [group.submit(i) for i in range(3)] == [0, 2, 4]
    assert runs == [[0], [1], [2]]

"""``JobSlots``: at most n job workers of one host work at once; one waiting on its link
gives its turn to another."""

from __future__ import annotations

import threading

import pytest

from edgefleet.agent import JobSlots


def test_at_most_n_hold_a_slot_and_a_waiting_worker_lends_its_own():
    slots = JobSlots(1)
    inside, go_on, lent = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with slots:
            order.append("first in")
            inside.set()
            with slots.released():  # waiting on the link: the other may work meanwhile
                lent.set()
                assert go_on.wait(10)
            order.append("first back")

    def second() -> None:
        assert lent.wait(10)
        with slots:
            order.append("second in")
        go_on.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order == ["first in", "second in", "first back"]


def test_a_slot_is_not_taken_twice():
    slots = JobSlots(1)
    with slots:
        got = []
        t = threading.Thread(target=lambda: got.append(slots._slots.acquire(blocking=False)))
        t.start()
        t.join(5)
        assert got == [False]  # held: nobody else gets one


def test_released_outside_a_slot_changes_nothing():
    slots = JobSlots(1)
    with slots.released():  # a thread holding none (an inference thread, say)
        pass
    with slots:  # still exactly one slot
        assert not slots._slots.acquire(blocking=False)


def test_a_host_gives_at_least_one_slot():
    with pytest.raises(ValueError, match="at least 1"):
        JobSlots(0)

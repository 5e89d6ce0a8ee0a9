"""``JobSlots``: at most n job workers of one host work at once; one waiting on its link
gives its turn to another."""

from __future__ import annotations

import threading

import pytest

from edgefleet.agent import JobSlots
from edgefleet.simulations.fleet import wait_until


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
        assert slots.free == 0  # held: nobody else gets one
        got: list[str] = []
        t = threading.Thread(target=lambda: slots.__enter__() and got.append("in"))
        t.start()
        wait_until(lambda: slots.waiting == (1, 0), 10)
        assert got == []
    t.join(10)  # the slot given back: the waiting worker has it now
    assert got == ["in"] and slots.free == 0
    slots.__exit__()
    assert slots.free == 1


def test_released_outside_a_slot_changes_nothing():
    slots = JobSlots(1)
    with slots.released():  # a thread holding none (an inference thread, say)
        pass
    with slots:  # still exactly one slot
        assert slots.free == 0
    assert slots.free == 1


def test_a_worker_back_from_its_wait_goes_before_one_starting_a_turn():
    """So a job that started ends before the next begins, in about its own time."""
    slots = JobSlots(1)
    order: list[str] = []
    lent, back, third_in, release_third = (threading.Event() for _ in range(4))

    def first() -> None:
        with slots:
            with slots.released():
                lent.set()
                assert back.wait(10)
            order.append("first back")

    def third() -> None:  # takes the slot the first lent, holds it while both queue
        assert lent.wait(10)
        with slots:
            third_in.set()
            assert release_third.wait(10)
            order.append("third out")

    def second() -> None:
        with slots:
            order.append("second in")

    workers = [threading.Thread(target=first), threading.Thread(target=third)]
    for t in workers:
        t.start()
    assert third_in.wait(10)
    starter = threading.Thread(target=second)
    starter.start()
    wait_until(lambda: slots.waiting == (1, 0), 10)
    back.set()
    wait_until(lambda: slots.waiting == (1, 1), 10)
    release_third.set()
    for t in [*workers, starter]:
        t.join(10)
    assert order == ["third out", "first back", "second in"]


def test_a_host_gives_at_least_one_slot():
    with pytest.raises(ValueError, match="at least 1"):
        JobSlots(0)

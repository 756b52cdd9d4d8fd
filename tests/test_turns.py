"""People first: background computations (refinements, warm-ups, prefetched scores) give way to requests; waits
are bounded in time and in number, and a release stops its owner's older ones whichever thread runs first."""
from __future__ import annotations

import threading
import time

import pytest

from merging.service.releases import Releases
from merging.service.runner import Runner
from merging.service.turns import Abandoned, Turns


def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Person(threading.Thread):
    """A person's request: waits for a turn (while the test holds the lock) and holds it until told to go."""

    def __init__(self, turns: Turns) -> None:
        super().__init__(daemon=True)
        self.turns, self.inside, self.go = turns, threading.Event(), threading.Event()

    def run(self):
        with self.turns.foreground():
            self.inside.set()
            self.go.wait(10)


def background_turn(turns: Turns) -> tuple[threading.Thread, threading.Event]:
    """A started thread that takes one background turn, and the event it sets inside it."""
    entered = threading.Event()

    def take():
        with turns.background():
            entered.set()

    worker = threading.Thread(target=take)
    worker.start()
    return worker, entered


def test_background_work_does_not_start_while_a_person_waits_or_runs():
    turns = Turns(patience=10)
    person = Person(turns)
    person.start()
    person.inside.wait(5)
    worker, entered = background_turn(turns)
    time.sleep(0.3)
    assert not entered.is_set() and turns.busy == 2
    person.go.set()
    worker.join(5)
    assert entered.is_set() and turns.busy == 0


def test_background_work_gives_up_waiting_after_its_patience():
    turns = Turns(patience=0.2)
    person = Person(turns)
    person.start()
    person.inside.wait(5)
    person.go.set()  # people who never stop coming: another one waits while the first leaves
    again = Person(turns)
    again.start()
    again.inside.wait(5)
    worker, entered = background_turn(turns)
    time.sleep(0.5)
    again.go.set()
    worker.join(5)
    assert entered.is_set()


def test_a_person_arriving_during_a_background_step_goes_before_the_next_step():
    turns, order, holding, go = Turns(patience=10), [], threading.Event(), threading.Event()

    def steps():
        with turns.background():
            holding.set()
            go.wait(5)
            order.append("step 1")
        with turns.background():
            order.append("step 2")

    def person():
        with turns.foreground():
            order.append("person")

    worker = threading.Thread(target=steps)
    worker.start()
    holding.wait(5)
    arriving = threading.Thread(target=person)
    arriving.start()
    wait_until(lambda: turns.people == 1)  # waiting for the lock the step holds
    go.set()
    worker.join(5)
    arriving.join(5)
    assert order == ["step 1", "person", "step 2"]


def test_turns_nest_in_one_thread_and_time_out_without_holding_anything():
    turns = Turns(patience=0.1)
    with turns.background() as a, turns.foreground() as b, turns.background() as c:
        assert a and b and c
    person = Person(turns)
    person.start()
    person.inside.wait(5)
    start = time.monotonic()
    with turns.foreground(timeout=0.2) as given:
        assert not given
    assert 0.15 < time.monotonic() - start < 2
    person.go.set()
    person.join(5)
    assert turns.busy == 0


def test_a_full_background_queue_drops_its_oldest_droppable_wait_and_never_a_persons():
    turns = Turns(patience=30, max_waiting=2)
    person = Person(turns)
    person.start()
    person.inside.wait(5)
    outcomes = {}

    def background(name, droppable):
        try:
            with turns.background(droppable=droppable):
                outcomes[name] = "ran"
        except Abandoned:
            outcomes[name] = "dropped"

    workers = []
    for name, droppable in (("refinement 1", True), ("warm-up", False), ("refinement 2", True)):
        workers.append(threading.Thread(target=background, args=(name, droppable)))
        workers[-1].start()
        time.sleep(0.1)
    wait_until(lambda: "refinement 1" in outcomes)
    assert outcomes == {"refinement 1": "dropped"}
    person.go.set()
    for worker in workers:
        worker.join(5)
    assert outcomes == {"refinement 1": "dropped", "warm-up": "ran", "refinement 2": "ran"}


def test_a_superseded_computation_stops_waiting_for_its_turn():
    runner, releases = Runner("cpu"), Releases()
    person = Person(runner.turns)
    person.start()
    person.inside.wait(5)
    older = releases.claim("someone")
    caught = []

    def refinement():
        try:
            with runner.turn(background=True, alive=older.alive):
                caught.append("ran")
        except Abandoned:
            caught.append("abandoned")

    worker = threading.Thread(target=refinement)
    worker.start()
    time.sleep(0.3)
    start = time.monotonic()
    releases.claim("someone")  # the owner released again
    worker.join(5)
    assert caught == ["abandoned"] and time.monotonic() - start < 1.0
    person.go.set()


def test_the_release_that_arrived_last_wins_whichever_claims_first():
    releases = Releases()
    first, second = releases.arrival(), releases.arrival()
    later = releases.claim("someone", second)  # its thread got there first
    earlier = releases.claim("someone", first)
    assert later.alive() and not earlier.alive()
    with pytest.raises(Abandoned):
        earlier.check()
    assert releases.claim("someone else", first).alive()  # owners are independent

"""People first: background computations (refinements, warm-ups, prefetched scores) give way to requests."""
from __future__ import annotations

import threading
import time

from merging.service.turns import Turns


def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def take_a_background_turn(turns: Turns, entered: threading.Event) -> None:
    with turns.background():
        entered.set()


def test_background_work_does_not_start_while_a_person_waits_even_with_the_lock_free():
    turns, entered = Turns(patience=10), threading.Event()
    with turns._calm:
        turns._people += 1  # a person's request on its way to the lock
    worker = threading.Thread(target=take_a_background_turn, args=(turns, entered))
    worker.start()
    time.sleep(0.3)
    assert not entered.is_set()
    with turns._calm:
        turns._people -= 1
        turns._calm.notify_all()
    worker.join(5)
    assert entered.is_set()


def test_background_work_gives_up_waiting_after_its_patience():
    turns, entered = Turns(patience=0.2), threading.Event()
    with turns._calm:
        turns._people += 1  # people who never stop coming
    worker = threading.Thread(target=take_a_background_turn, args=(turns, entered))
    worker.start()
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
    wait_until(lambda: turns._people == 1)  # waiting for the lock the step holds
    go.set()
    worker.join(5)
    arriving.join(5)
    assert order == ["step 1", "person", "step 2"]


def test_turns_nest_in_one_thread():
    turns = Turns(patience=0.1)
    with turns.background(), turns.foreground(), turns.background():
        pass
    with turns.foreground(), turns.foreground():
        pass

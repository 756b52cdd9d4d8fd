"""One computation at a time, people first: the work a person waits on (a release's first answer, a probe, an
alignment) goes before background work (refinements, warm-ups, prefetched scores), which takes its turns in short
steps between them. Waiting background work is bounded: past the bound, the oldest droppable wait is dropped."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Abandoned(Exception):
    """A computation nobody waits for any more: its release was superseded, or it was dropped from a full queue."""


class Turns:
    """A re-entrant lock with two kinds of holder. `background()` first waits until no `foreground()` holder is
    waiting or running (at most `patience` seconds from its first try, so it can never starve), then takes the lock.
    At most `max_waiting` background waits are kept: past that, the oldest droppable one raises `Abandoned`.

    Both take a `timeout`: the block then runs with False when the turn did not come in time (nothing is held), so
    that a caller can report, check whether anyone still waits, and try again."""

    def __init__(self, patience: float = 30.0, max_waiting: int = 8) -> None:
        self.patience, self.max_waiting = patience, max_waiting
        self._lock = threading.RLock()
        self._calm = threading.Condition()
        self._people = 0  # foreground holders waiting or running
        self._background = 0  # background holders of the lock (a nested turn counts once more)
        self._waiting: list[_Wait] = []  # background waits, oldest first

    @property
    def people(self) -> int:
        """People's requests waiting for a turn or running one."""
        return self._people

    @property
    def busy(self) -> int:
        """Computations running or waiting, of either kind."""
        with self._calm:
            return self._people + len(self._waiting) + self._background

    @contextmanager
    def foreground(self, timeout: float | None = None) -> Iterator[bool]:
        with self._calm:
            self._people += 1
        try:
            if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
                yield False
                return
            try:
                yield True
            finally:
                self._lock.release()
        finally:
            with self._calm:
                self._people -= 1
                self._calm.notify_all()

    @contextmanager
    def background(self, timeout: float | None = None, *, since: float | None = None,
                   droppable: bool = False) -> Iterator[bool]:
        """`since`: when this computation first asked for the turn (its patience counts from then)."""
        wait = _Wait(since or time.monotonic(), droppable)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._calm:
            self._waiting.append(wait)
            self._drop_beyond_bound()
            try:
                while self._people and not wait.dropped:
                    left = wait.since + self.patience - time.monotonic()
                    if deadline is not None:
                        left = min(left, deadline - time.monotonic())
                    if left <= 0:
                        break
                    self._calm.wait(left)
            finally:
                self._waiting.remove(wait)
        if wait.dropped:
            raise Abandoned("dropped: too much background work was waiting")
        patient = self._people and wait.since + self.patience > time.monotonic()
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if patient or not self._lock.acquire(timeout=-1 if left is None else left):
            yield False
            return
        try:
            with self._calm:
                self._background += 1
            yield True
        finally:
            with self._calm:
                self._background -= 1
            self._lock.release()

    def _drop_beyond_bound(self) -> None:
        """Callers hold `_calm`."""
        droppable = [w for w in self._waiting if w.droppable and not w.dropped]
        excess = len([w for w in self._waiting if not w.dropped]) - self.max_waiting
        for wait in droppable[:max(excess, 0)]:
            wait.dropped = True
        if excess > 0:
            self._calm.notify_all()


class _Wait:
    def __init__(self, since: float, droppable: bool) -> None:
        self.since, self.droppable, self.dropped = since, droppable, False

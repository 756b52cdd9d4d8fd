"""One computation at a time, people first: the work a person waits on (a release's first answer, a probe, an
alignment) goes before background work (refinements, warm-ups, prefetched scores), which takes its turns in short
steps between them."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    """A re-entrant lock with two kinds of holder. `background()` first waits (at most `patience` seconds, so it
    can never starve) until no `foreground()` holder is waiting or running, then takes the lock."""

    def __init__(self, patience: float = 30.0) -> None:
        self.patience = patience
        self._lock = threading.RLock()
        self._calm = threading.Condition()
        self._people = 0  # foreground holders waiting or running

    @property
    def people(self) -> int:
        """People's requests waiting for a turn or running one."""
        return self._people

    @contextmanager
    def foreground(self) -> Iterator[None]:
        with self._calm:
            self._people += 1
        try:
            with self._lock:
                yield
        finally:
            with self._calm:
                self._people -= 1
                self._calm.notify_all()

    @contextmanager
    def background(self) -> Iterator[None]:
        with self._calm:
            self._calm.wait_for(lambda: self._people == 0, timeout=self.patience)
        with self._lock:
            yield

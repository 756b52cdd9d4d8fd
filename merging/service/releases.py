"""Slider releases in the order they arrived: each gets a number when it reaches the server, and per person only the
highest number's computations go on (a person's newer release stops their older one, whichever thread runs first)."""
from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass

from .turns import Abandoned


@dataclass(frozen=True)
class Lease:
    """One release's claim on its owner's computations: alive while it is its owner's newest."""

    owner: str
    number: int
    releases: Releases

    def alive(self) -> bool:
        return self.releases.newest(self.owner) == self.number

    def check(self) -> None:
        if not self.alive():
            raise Abandoned(f"release {self.number} of {self.owner[:12]} was superseded")


class Releases:
    """Numbers releases as they arrive (`arrival()`, called where a request first reaches the server) and keeps the
    newest per owner (at most `owners` owners are remembered; the oldest are forgotten)."""

    def __init__(self, owners: int = 4096) -> None:
        self._counter = itertools.count(1)
        self._newest: OrderedDict[str, int] = OrderedDict()
        self._owners = owners
        self._lock = threading.Lock()

    def arrival(self) -> int:
        """The next number, in arrival order."""
        with self._lock:
            return next(self._counter)

    def claim(self, owner: str, number: int | None = None) -> Lease:
        """A lease for `owner`'s release numbered `number` (given on arrival; now when None). A release numbered
        below its owner's newest is born superseded."""
        with self._lock:
            number = next(self._counter) if number is None else int(number)
            newest = max(self._newest.pop(owner, 0), number)
            self._newest[owner] = newest
            while len(self._newest) > self._owners:
                self._newest.popitem(last=False)
            return Lease(owner, number, self)

    def newest(self, owner: str) -> int | None:
        return self._newest.get(owner)

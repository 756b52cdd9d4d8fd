"""The live probe suite and the probes fitted on it, cached by what they were fitted for."""
from __future__ import annotations

from collections import OrderedDict

import torch

from ..encoders import Encoder
from ..probes import LinearProbe, ProbeScores, ProbeSuite
from ..state import state_checksum
from .pool import torch_threads


class ProbeBench:
    """The live probe suite and the probes fitted on it, cached by the weights they were fitted for."""

    def __init__(self, suite: ProbeSuite, cache_size: int = 16) -> None:
        self.suite = suite
        self._fitted: OrderedDict[str, tuple[dict[str, LinearProbe], ProbeScores]] = OrderedDict()
        self._cache_size = cache_size

    @property
    def domains(self) -> dict[str, str]:
        return {task.name: task.domain for task in self.suite.tasks}

    def describe(self) -> str:
        tasks = self.suite.tasks
        train, test = max(len(t.train) for t in tasks), max(len(t.test) for t in tasks)
        return f"live probes: {train} train / {test} test clips per task ({len(self.suite.clips)} clips in all)"

    def evaluate(self, encoder: Encoder, key: str | None = None) -> tuple[dict[str, LinearProbe], ProbeScores]:
        """Probes fitted on `encoder`'s features and their test scores, cached by `key` (default: its weights)."""
        key = key or state_checksum(encoder.state_dict())
        if key not in self._fitted:
            self.suite.features(encoder)
            with torch_threads(1):  # many small ops: extra threads only wait on each other, badly so on a busy CPU
                probes = self.suite.fit(encoder)
                self._fitted[key] = (probes, self.suite.score(encoder, probes=probes))
            while len(self._fitted) > self._cache_size:
                self._fitted.popitem(last=False)
        self._fitted.move_to_end(key)
        return self._fitted[key]

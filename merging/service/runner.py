"""Where the service computes: the device, the torch thread count, one pooled model per architecture with the input
weights kept beside it, and the people-first turns. The lab, the scorer and the teaching panels share one runner."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from ..encoders import Encoder
from ..registry import get_method, merge as run_method
from ..state import StateDict, torch_threads
from .pool import ModelPool, copying
from .session import MergeRecipe
from .turns import Abandoned, Turns
from .weights import KeptWeights, Reordered

TICK = 0.25  # seconds a waiting computation waits before it checks again whether anyone still wants it


class Runner:
    """Computations of the service, one at a time on `device`, people's requests first (`turn`)."""

    def __init__(self, device: str = "auto", threads: int = 0, turns: Turns | None = None) -> None:
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.threads = threads
        self.turns = turns or Turns()
        self.pool = ModelPool()
        self.kept = KeptWeights()

    @property
    def people(self) -> int:
        """People's requests waiting for a turn or running one."""
        return self.turns.people

    def busy(self) -> int:
        """Computations running or waiting."""
        return self.turns.busy

    @contextmanager
    def turn(self, *, background: bool = False, wait: float | None = None, alive: Callable[[], bool] | None = None,
             since: float | None = None, droppable: bool = False) -> Iterator[bool]:
        """A turn with the configured thread count: yields True, or False when `wait` seconds passed first. With
        `alive`, waits at most TICK at a time and raises `Abandoned` once nobody wants the work. `since`: when a
        background computation first asked (its patience counts from then); `droppable`: a background wait that a
        full queue may drop (Abandoned)."""
        deadline = None if wait is None else time.monotonic() + wait
        since = since or time.monotonic()
        while True:
            if alive is not None and not alive():
                raise Abandoned("nobody waits for this computation any more")
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            tick = left if alive is None else min(TICK, TICK if left is None else left)
            turn = (self.turns.background(tick, since=since, droppable=droppable) if background
                    else self.turns.foreground(tick))
            with turn as given:
                if given:
                    with torch_threads(self.threads):
                        yield True
                    return
            if deadline is not None and time.monotonic() >= deadline:
                yield False
                return

    @contextmanager
    def running(self, key: str, encoder: Encoder) -> Iterator[Encoder]:
        """An unmerged encoder running in the pooled model (inside a turn)."""
        with self.pool.hold(encoder, self.device, f"encoder {key}", copying(encoder.state_dict()), encoder.name) as running:
            yield running

    @contextmanager
    def merged(self, recipe: MergeRecipe, encoders: Mapping[str, Encoder]) -> Iterator[Encoder]:
        """The recipe's merged encoder running in the pooled model (inside a turn; weights rebuilt unless held)."""
        first = encoders[next(iter(recipe.inputs))]
        with self.pool.hold(first, self.device, recipe.key, lambda out: self._write(recipe, encoders, out),
                            f"merged {recipe.method}") as merged:
            yield merged

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _write(self, recipe: MergeRecipe, encoders: Mapping[str, Encoder], out: StateDict) -> None:
        """Rebuild the recipe's weights into `out`: in place for the interpolations (at the memory-bandwidth
        limit, with the re-ordered music weights kept on the device), by a copy of the result otherwise."""
        method = get_method(recipe.method)
        states = {role: self.kept.on(self.device, recipe.inputs[role], encoders[role]) for role in method.inputs}
        params = dict(recipe.params)
        if method.aligns:
            role = method.aligns
            params["alignment"] = Reordered(self.kept.reordered(self.device, recipe.inputs[role], encoders[role],
                                                                recipe.alignment_key, recipe.alignment))
        if method.into is not None:  # the allow-listed encoders were checked finite when loaded
            method.into(out, *(states[role] for role in method.inputs), **method.arguments(params), inputs_finite=True)
        else:
            copying(run_method(recipe.method, states, **params))(out)

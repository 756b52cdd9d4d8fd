"""Input weights where the merges run: device copies of the shared encoders and music weights re-ordered by
an alignment, kept for the next merges (a slider's releases re-merge the same inputs)."""
from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from ..align import Alignment
from ..encoders import Encoder
from ..state import StateDict


class KeptWeights:
    """Bounded caches keyed by what the weights are (encoder key, alignment key, device), never by a tensor's
    identity or version: the encoders are never changed, and an alignment is a value."""

    def __init__(self, copies: int = 6, reordered: int = 2) -> None:
        self._copies, self._reordered = _Bounded(copies), _Bounded(reordered)
        self._lock = threading.Lock()

    def on(self, device: str, key: str, encoder: Encoder) -> StateDict:
        """`encoder`'s weights on `device`: its own tensors when it is there, else a kept copy."""
        if encoder.device == torch.device(device):
            return encoder.state_dict()
        return self._kept(self._copies, (key, str(device)),
                          lambda: {name: t.to(device, copy=True) for name, t in encoder.state_dict().items()})

    def reordered(self, device: str, key: str, encoder: Encoder, alignment_key: tuple, alignment: Alignment) -> StateDict:
        """`encoder`'s weights on `device` re-ordered by `alignment` (computed once, then kept)."""
        return self._kept(self._reordered, (key, alignment_key, str(device)),
                          lambda: alignment.apply(self.on(device, key, encoder)))

    def _kept(self, cache: _Bounded, key: tuple, make) -> StateDict:
        with self._lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        state = make()
        with self._lock:
            cache[key] = state
            while len(cache) > cache.limit:
                cache.popitem(last=False)
        return state


class _Bounded(OrderedDict):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit


class Reordered:
    """An aligner whose `apply` returns music weights already re-ordered (for `methods.permute_into`)."""

    def __init__(self, state: StateDict) -> None:
        self._state = state

    def apply(self, music: StateDict) -> StateDict:
        return self._state

"""One reusable model per device and architecture, and the process-wide torch thread count."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import HubertModel

from ..encoders import COMPATIBILITY_FIELDS, Encoder, build_model
from ..state import StateDict


def _architecture(config) -> tuple:
    return tuple(str(getattr(config, name, None)) for name in COMPATIBILITY_FIELDS)


class ModelPool:
    """One HubertModel per (device, architecture), reused for every merge and every encoder that has to run
    there: weights are copied into it, so memory does not grow with the number of merges or sessions."""

    def __init__(self) -> None:
        self._models: dict[tuple, HubertModel] = {}
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._models)

    @contextmanager
    def hold(self, like: Encoder, state: StateDict, device: str, name: str) -> Iterator[Encoder]:
        """An Encoder (`like`'s rate and normalisation) running `state` on `device`, valid inside the block."""
        with self.lock:
            key = (str(device), _architecture(like.config))
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = build_model(like.config, state, what=name, device=device)
            else:
                with torch.no_grad():
                    model.load_state_dict(state, strict=True)
            yield Encoder(model, like.sample_rate, like.normalize, name, "merge lab")


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op threads (0: leave as is). Process-wide: callers hold the Lab's lock."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)

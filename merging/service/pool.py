"""One reusable model per device and architecture, and the process-wide torch thread count."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformers import HubertModel

from ..encoders import COMPATIBILITY_FIELDS, Encoder, build_model
from ..state import StateDict, check_same_keys

Fill = Callable[[StateDict], object]  # writes weights into the given tensors, in place


def _architecture(config) -> tuple:
    return tuple(str(getattr(config, name, None)) for name in COMPATIBILITY_FIELDS)


def weights_of(model: HubertModel) -> StateDict:
    """The model's parameters and buffers by state-dict name, sharing their memory (writing them changes it)."""
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def copying(state: StateDict) -> Fill:
    """A fill that copies `state` into the model's weights."""

    def fill(out: StateDict) -> None:
        check_same_keys({"model": out, "weights": state})
        names = list(out)
        torch._foreach_copy_([out[name] for name in names], [state[name] for name in names])

    return fill


class ModelPool:
    """One HubertModel per (device, architecture), reused for every merge and every encoder that has to run
    there: weights are written into its parameters, so memory does not grow with merges or sessions. The
    pool remembers what each model holds (a tag), so holding the same weights again writes nothing."""

    def __init__(self) -> None:
        self._models: dict[tuple, HubertModel] = {}
        self._holding: dict[tuple, str | None] = {}
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._models)

    @contextmanager
    def hold(self, like: Encoder, device: str, tag: str, fill: Fill, name: str = "merge lab") -> Iterator[Encoder]:
        """An Encoder (`like`'s architecture, rate and normalisation) on `device` whose weights are what `fill`
        writes (skipped when the model already holds `tag`); valid inside the block."""
        with self.lock:
            key = (str(device), _architecture(like.config))
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = build_model(like.config, like.state_dict(), what=name, device=device)
                self._holding[key] = None
            if self._holding[key] != tag:
                self._holding[key] = None  # unspecified until `fill` completes
                with torch.no_grad():
                    fill(weights_of(model))
                self._holding[key] = tag
            yield Encoder(model, like.sample_rate, like.normalize, name, "merge lab")

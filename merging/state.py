"""Helpers shared by the whole library: state dicts, its error type, and torch's thread count."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

StateDict = dict[str, torch.Tensor]


class MergeError(ValueError):
    """Bad input to the library: the message says what is wrong and nothing was changed."""


QUOTE_LIMIT = 40  # characters of someone's input quoted back in a message


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`value` quoted for a message, cut short: a message never echoes a whole megabyte back."""
    if isinstance(value, str):
        return repr(value if len(value) <= limit else value[:limit] + "…")
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def state_checksum(state: StateDict) -> str:
    """A hash of every tensor's name, dtype, shape and bytes; equal checksums mean equal weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_finite(state: StateDict, what: str = "weights") -> None:
    """Raise MergeError naming the first tensor holding a NaN or Inf."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise MergeError(f"{what}: tensor '{name}' contains NaN or Inf values")


def check_same_keys(states: dict[str, StateDict]) -> None:
    """Raise MergeError naming the first key or shape that differs between the given state dicts."""
    (first_label, first), *others = states.items()
    for label, other in others:
        missing = sorted(set(first) - set(other))
        extra = sorted(set(other) - set(first))
        if missing:
            raise MergeError(f"'{label}' lacks weight '{missing[0]}' that '{first_label}' has")
        if extra:
            raise MergeError(f"'{label}' has weight '{extra[0]}' that '{first_label}' lacks")
        for name, tensor in first.items():
            if tuple(other[name].shape) != tuple(tensor.shape):
                raise MergeError(
                    f"weight '{name}' has shape {tuple(tensor.shape)} in '{first_label}' "
                    f"but {tuple(other[name].shape)} in '{label}'"
                )


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op threads (0: leave as is). Process-wide: callers run one computation at
    a time (the service's turns)."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)

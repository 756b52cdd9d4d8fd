"""Values that belong to one person's session: replaced, never changed. A session keeps recipes, not
weights: the service rebuilds a merge's weights from its recipe when they are needed (probe, export)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from ..align import Alignment
from ..registry import get_method
from ..state import MergeError


def ends(inputs: Mapping[str, str]) -> tuple[tuple[str, str], tuple[str, str]]:
    """(role, encoder key) of a merge's two ends: its inputs other than a task-vector base."""
    found = [(role, key) for role, key in inputs.items() if role != "base"]
    if len(found) != 2:
        raise MergeError(f"a merge between two encoders is expected, not of {', '.join(role for role, _ in found)}")
    return found[0], found[1]


def permutations_only(alignment: Alignment) -> Alignment:
    """The alignment without its similarity matrices (hundreds of MB at base size): what a merge needs."""
    return replace(alignment, groups={name: replace(group, perm=group.perm.cpu(), similarity=torch.empty(0))
                                      for name, group in alignment.groups.items()})


@dataclass(frozen=True)
class MergeRecipe:
    """What a merge is made of: rebuilding from it gives the same weights, bit for bit. Its `key` names its content
    (the inputs by checksum, the method, every argument, the alignment), so equal keys mean equal merges."""

    method: str
    params: dict  # the method's checked arguments, as the page gave them
    inputs: dict[str, str]  # method input role -> encoder key
    checksums: tuple[tuple[str, str], ...]  # (role, checksum of its encoder's weights)
    alignment: Alignment | None = None  # permutations only, for a method that aligns an input
    alignment_key: tuple | None = None  # what the alignment was computed from (checksums and settings)
    allow_rate_mismatch: bool = False  # merged although the inputs' sample rates differ, as asked

    @property
    def key(self) -> str:
        return json.dumps([self.method, self.arguments, self.checksums, self.alignment_key], default=str)

    @property
    def arguments(self) -> dict:
        """Every argument, defaults filled in (two recipes that differ only by an unset default are one merge)."""
        return {**get_method(self.method).defaults, **self.params}

    @property
    def family(self) -> str:
        """The recipe without where it sits on the speech–music axis: the merges that draw one curve."""
        placement = get_method(self.method).placement
        moving = set(placement.params) if placement else set()
        others = {name: value for name, value in self.arguments.items() if name not in moving}
        return json.dumps([self.method, others, self.checksums, self.alignment_key], default=str)

    @property
    def placed(self) -> tuple[float, str] | None:
        """(position on the speech–music axis, label), or None for a method that does not place its merges."""
        return get_method(self.method).place(self.params)

    @property
    def position(self) -> float | None:
        placed = self.placed
        return None if placed is None else placed[0]

    @property
    def ends(self) -> tuple[tuple[str, str], tuple[str, str]]:
        return ends(self.inputs)

    def at(self, **params) -> MergeRecipe:
        """The same recipe with other arguments (e.g. another α on its curve)."""
        return replace(self, params={**self.params, **params})


@dataclass(frozen=True)
class MergeResult:
    """A merge a session made: its recipe, how long writing its weights took and where, and the latest live stage
    the page showed of its scores (the scores themselves are computed by the live stages, not at merge time)."""

    recipe: MergeRecipe
    merge_seconds: float
    device: str
    stage: dict | None = None  # the latest live stage the page showed (scores, intervals, clip counts)

    @property
    def method(self) -> str:
        return self.recipe.method

    @property
    def params(self) -> dict:
        return self.recipe.params

    @property
    def sources(self) -> dict[str, str]:
        return self.recipe.inputs


@dataclass(frozen=True)
class LabSession:
    """One person's work: replaced, never changed, by every Lab operation."""

    alignment: Alignment | None = None  # permutations and their before/after scores (the matrices stay in the Lab)
    alignment_key: tuple | None = None
    alignment_pair: tuple[str, str] | None = None  # (speech key, music key) it was computed for
    merged: MergeResult | None = None
    previous: MergeResult | None = None  # the merge before `merged` (what "better than my last one" compares with)


@dataclass(frozen=True)
class ClipReport:
    """Probe predictions for one clip: per column (the first input's role, "merged", the second input's role)
    the class probabilities per task, or None where there is no merge yet."""

    inputs: tuple[tuple[str, str], tuple[str, str]]  # (role, encoder key) of the two non-base inputs
    tasks: tuple[str, ...]
    predictions: dict[str, dict[str, dict[str, float]] | None]
    clip_name: str
    seconds: float  # clip length used
    warnings: tuple[str, ...]

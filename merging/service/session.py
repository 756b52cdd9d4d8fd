"""Values that belong to one person's session: replaced, never changed. A session keeps recipes, not
weights: the service rebuilds a merge's weights from its recipe when they are needed (probe, export)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import torch

from ..align import Alignment
from .controls import ALPHA_METHODS


def permutations_only(alignment: Alignment) -> Alignment:
    """The alignment without its similarity matrices (hundreds of MB at base size): what a merge needs."""
    return replace(alignment, groups={name: replace(group, perm=group.perm.cpu(), similarity=torch.empty(0))
                                      for name, group in alignment.groups.items()})


@dataclass(frozen=True)
class MergeRecipe:
    """What a merge is made of: rebuilding from it gives the same weights, bit for bit."""

    method: str
    params: dict  # the method's checked arguments, as the page gave them
    inputs: dict[str, str]  # method input role -> encoder key
    alignment: Alignment | None = None  # permutations only, for a method that aligns an input
    alignment_key: tuple | None = None  # what the alignment was computed from (the service's cache key)
    allow_rate_mismatch: bool = False  # merged although the inputs' sample rates differ, as asked

    @property
    def key(self) -> str:
        return json.dumps([self.method, self.params, sorted(self.inputs.items()), self.alignment_key], default=str)


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

    @property
    def position(self) -> float:
        """Where it sits between its two inputs (0: the first): α, or the music λ's share."""
        return tradeoff_position(self.method, self.params)[0]


@dataclass(frozen=True)
class LabSession:
    """One person's work: replaced, never changed, by every Lab operation."""

    alignment: Alignment | None = None  # permutations and their before/after scores (the matrices stay in the Lab)
    alignment_key: tuple | None = None
    alignment_pair: tuple[str, str] | None = None  # (speech key, music key) it was computed for
    merged: MergeResult | None = None
    curves: dict[str, tuple[tuple, tuple[dict, ...]]] = field(default_factory=dict)  # method -> (sources, points)

    def curve_points(self) -> dict[str, list[dict]]:
        return {method: sorted(points, key=lambda p: p["alpha"]) for method, (_, points) in self.curves.items()}


def tradeoff_position(method: str, params: dict) -> tuple[float, str]:
    """A merge's x on the speech/music trade-off plane (α, or λ music's share) and its short label."""
    if method in ALPHA_METHODS:
        label = f"α={params['alpha']:g}" + (" (per layer)" if params.get("layer_alphas") else "")
        return params["alpha"], label
    ls, lm = params["lambda_speech"], params["lambda_music"]
    return (lm / (ls + lm) if ls + lm else 0.5), f"λ={ls:g}/{lm:g}"


def tradeoff_point(method: str, params: dict, speech_avg: float, music_avg: float) -> dict:
    """A merge on the speech/music trade-off plane, with its speech and music probe averages."""
    x, label = tradeoff_position(method, params)
    return {"alpha": x, "label": label, "speech_avg": speech_avg, "music_avg": music_avg}


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

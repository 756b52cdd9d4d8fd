"""Values that belong to one person's session: replaced, never changed."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..align import Alignment
from ..probes import LinearProbe, ProbeScores
from ..state import StateDict
from .controls import ALPHA_METHODS


@dataclass(frozen=True)
class MergeResult:
    method: str
    params: dict
    sources: dict[str, str]  # method input role -> encoder key
    state: StateDict  # on the CPU, whatever device merged it
    probes: dict[str, LinearProbe]
    scores: ProbeScores
    merge_seconds: float
    score_seconds: float
    device: str
    alignment: Alignment | None = None  # the one a permute merge used

    def point(self) -> dict:
        return tradeoff_point(self.method, self.params, self.scores)


@dataclass(frozen=True)
class LabSession:
    """One person's work: replaced, never changed, by every Lab operation."""

    alignment: Alignment | None = None
    alignment_pair: tuple[str, str] | None = None  # (speech key, music key) it was computed for
    merged: MergeResult | None = None
    curves: dict[str, tuple[tuple, tuple[dict, ...]]] = field(default_factory=dict)  # method -> (sources, points)

    def curve_points(self) -> dict[str, list[dict]]:
        return {method: sorted(points, key=lambda p: p["alpha"]) for method, (_, points) in self.curves.items()}


def tradeoff_point(method: str, params: dict, scores: ProbeScores) -> dict:
    """A merge on the speech/music trade-off plane: x is α (or λ music's share), with a short label."""
    if method in ALPHA_METHODS:
        x, label = params["alpha"], f"α={params['alpha']:g}"
        if params.get("layer_alphas"):
            label += " (per layer)"
    else:
        ls, lm = params["lambda_speech"], params["lambda_music"]
        x, label = lm / (ls + lm) if ls + lm else 0.5, f"λ={ls:g}/{lm:g}"
    return {"alpha": x, "label": label, "speech_avg": scores.average("speech"), "music_avg": scores.average("music")}


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

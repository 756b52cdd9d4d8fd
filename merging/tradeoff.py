"""The speech/music trade-off: the one grid of each kind that traces a method's curve, and the scored points
drawn on the trade-off plane (music average across, speech average up)."""
from __future__ import annotations

from dataclasses import dataclass

from .registry import get_method

# α from the first input (0) to the second (1): the benchmark's rows, the app's curves and sweeps
ALPHA_GRID = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
# (λ_speech, λ_music) interpolations, λs + λm = 1 (the distilled-task-vector setting): the benchmark's choice and sweeps
LAMBDA_GRID = ((0.9, 0.1), (0.7, 0.3), (0.5, 0.5), (0.3, 0.7), (0.1, 0.9))


def grid(method: str) -> list[dict]:
    """The arguments that trace `method`'s curve: α strictly between the ends for a method placed along α (its ends
    are its inputs), the λ grid for one placed by its λs, nothing for a method not placed."""
    placement = get_method(method).placement
    if placement is None:
        return []
    if placement.params == ("alpha",):
        return [{"alpha": a} for a in ALPHA_GRID if 0 < a < 1]
    if set(placement.params) == {"lambda_speech", "lambda_music"}:
        return [{"lambda_speech": s, "lambda_music": m} for s, m in LAMBDA_GRID]
    return []


@dataclass(frozen=True)
class Point:
    """A scored merge on the trade-off plane: where it sits on the speech–music axis and its label, the stage its
    scores come from, and its speech and music averages with their 95 % intervals (low, high)."""

    position: float
    label: str
    stage: str
    speech: float
    music: float
    speech_interval: tuple[float, float] | None = None
    music_interval: tuple[float, float] | None = None

    def as_plot(self) -> dict:
        """The plain data `viz.figures.tradeoff_curve` draws."""
        return {"alpha": self.position, "label": self.label, "speech_avg": self.speech, "music_avg": self.music,
                "speech_interval": self.speech_interval, "music_interval": self.music_interval}

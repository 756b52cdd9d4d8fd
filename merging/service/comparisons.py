"""Is this merge better than what I had? A stage's scores against the merge's two inputs and the person's previous
merge: the difference of each average (overall, speech, music) with its 95 % interval, paired on the clips both
were scored on where they were (`merging.live.stage_difference`)."""
from __future__ import annotations

from ..estimate import AVERAGES
from ..live import LiveScores, stage_difference
from .session import LabSession, MergeRecipe


def latest_like(stages: dict[int, LiveScores], like: LiveScores) -> LiveScores | None:
    """Of a merge's known stages that estimate the full suite, the one to set beside `like`: the same stage, else the
    full suite, else the most complete."""
    stages = {k: s for k, s in stages.items() if s.estimates_full_suite}
    if not stages:
        return None
    if like.per_class in stages:
        return stages[like.per_class]
    return stages[0] if 0 in stages else stages[max(stages)]


def differences(first: LiveScores, second: LiveScores) -> dict[str, list[float]]:
    """{"avg" | "speech_avg" | "music_avg": [difference, low, high]}, rounded for a summary."""
    return {name: [round(v, 2) for v in stage_difference(first, second, domain)] for name, domain in AVERAGES.items()}


def compared(scoring, session: LabSession, scores: LiveScores) -> dict[str, dict[str, list[float]]]:
    """The session's merge at this stage minus each of its inputs ("<role>_input", their full-suite scores) and
    minus the person's previous merge ("previous", at the same stage when it reached it) where known. Nothing while the
    stage is uncorrected: its scores are its own clips', not estimates of the full suite's."""
    recipe: MergeRecipe = session.merged.recipe
    out = {}
    if not scores.estimates_full_suite:
        return out
    for role, key in recipe.ends:
        known = scoring.input_stage(key)
        if known is not None:
            out[f"{role}_input"] = differences(scores, known)
    if session.previous is not None:
        before = latest_like(scoring.book.stages(session.previous.recipe), scores)
        if before is not None:
            out["previous"] = differences(scores, before)
    return out

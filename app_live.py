"""The merge panel's live scores on the page: a quick estimate first, then refined stages up to the full suite,
each bar with its 95 % interval and test-clip count, the page saying which stage it shows."""
from __future__ import annotations

from collections.abc import Iterator

import app_text
from merging.live import LiveScores
from merging.service.live_scores import LiveScoring, inputs_of
from merging.stats import average_interval
from viz.figures import tradeoff_curve

STAGE_NOTE = {"quick": "quick estimate", "full": "full suite (the benchmark's scores)"}


def stage_status(scores: LiveScores, refining: bool) -> str:
    clips = f"{scores.clips:,} clips"
    if scores.stage == "full":
        return f"**stage: full suite** · {clips}, the benchmark's probes: final"
    per_class = f"{scores.per_class} train / {scores.per_class} test clips per class"
    note = "corrected by both inputs' full-suite scores; 95 % intervals"
    return f"**stage: {STAGE_NOTE.get(scores.stage, scores.stage)}** · {per_class}, {clips} · {note}" + \
        (" · refining…" if refining else "")


def bar_data(scoring: LiveScoring, session, scores: LiveScores) -> tuple[dict, dict, dict]:
    """Scores, intervals and test-clip counts by bar name: the two inputs (full suite) and the merge (this stage)."""
    merged = session.merged
    roles = [role for role in merged.sources if role != "base"]
    values, intervals, counts = {}, {}, {}
    for role, key in zip(roles, inputs_of(merged.recipe)):
        parent = scoring.parent(key)
        name = app_text.display_role(role)
        values[name] = dict(parent.full)
        intervals[name] = {t: average_interval({t: r.correct}) for t, r in parent.full_results.items()}
        counts[name] = {t: len(r.correct) for t, r in parent.full_results.items()}
        if len(values) == 1:  # the merge sits between its inputs
            values["merged"] = {t: round(e.score, 2) for t, e in scores.tasks.items()}  # as the summary gives them
            intervals["merged"] = {t: (e.low, e.high) for t, e in scores.tasks.items()}
            counts["merged"] = {t: e.test_clips for t, e in scores.tasks.items()}
    return values, intervals, counts


def curve(scoring: LiveScoring, session, sources: dict, scores: LiveScores):
    """The full-suite linear and permute curves of the chosen speech/music pair (when computed), this merge starred
    with its interval; before they exist, the session's own points."""
    speech, music = (scores.average(d) for d in ("speech", "music"))
    star = {"speech_avg": speech.score, "music_avg": music.score, "speech_interval": (speech.low, speech.high),
            "music_interval": (music.low, music.high)}
    curves = scoring.curves(sources.get("speech"), sources.get("music"))
    if curves is None:
        return tradeoff_curve(session.curve_points(), current=star,
                              title=f"trade-off, this merge at stage {scores.stage} (full-suite curves being computed)")
    return tradeoff_curve(curves, current=star, title=f"linear and permute over α (full suite), this merge: {scores.stage}")


def stream(scoring: LiveScoring, session, sources: dict, owner: str, merge_status: str, summary: dict,
           bars, place) -> Iterator[tuple]:
    """(session, status, bars, curve, summary) per stage of the session's merge, until the full suite or a newer
    merge; `place(session, stage summary, the inputs' averages)` records each stage in the session (the Lab's
    `with_stage`)."""
    merged, ends = session.merged, None
    for fraction, scores in scoring.stream(merged.recipe, merged.position, owner):
        if scores is None:
            continue
        probes = f"{scores.stage}: {scores.clips} clips" + ("" if scores.stage == "full" else ", corrected by both inputs")
        summary = {**summary, **scores.summary(), "probes": probes}
        ends = ends or scoring.input_averages(merged.recipe)  # the inputs' scores are ready once a stage is
        session = place(session, summary, ends)
        values, intervals, counts = bar_data(scoring, session, scores)
        status = f"{merge_status}  \n{stage_status(scores, fraction < 1.0)}"
        yield session, status, bars(values, intervals, counts), curve(scoring, session, sources, scores), summary

"""The merge panel's live scores on the page: a quick estimate first, then refined stages up to the full suite,
each bar with its 95 % interval and test-clip count, the page saying which stage it shows, and the trade-off plot
with the full-suite curves and this merge starred."""
from __future__ import annotations

import time
from collections.abc import Iterator

import gradio as gr

import app_text
from merging.live import LiveScores
from merging.service.comparisons import compared, latest_like
from merging.service.scoring import point
from merging.service.session import MergeRecipe
from viz.figures import MERGED, MUSIC, SPEECH, probe_bars, tradeoff_curve

BAR_COLOURS = {"speech": SPEECH, "music": MUSIC, "fine-tuned": MUSIC, "merged": MERGED}
PROGRESS_SECONDS = 0.5  # between two progress lines while a stage computes (each lets the page stop the work)


def bar_data(scoring, recipe: MergeRecipe, scores: LiveScores) -> tuple[dict, dict, dict]:
    """Scores, intervals and test-clip counts by bar name: the two inputs (full suite, once known) and the merge (this
    stage) between them."""
    shown = [(app_text.display_role(role), scoring.input_stage(key)) for role, key in recipe.ends]
    shown.insert(1, ("merged", scores))
    values, intervals, counts = {}, {}, {}
    for name, stage in shown:
        if stage is not None:
            values[name] = {t: round(e.score, 2) for t, e in stage.tasks.items()}  # as the summary gives them
            intervals[name] = {t: (e.low, e.high) for t, e in stage.tasks.items()}
            counts[name] = {t: e.test_clips for t, e in stage.tasks.items()}
    return values, intervals, counts


def bars(scoring, recipe: MergeRecipe, scores: LiveScores):
    values, intervals, counts = bar_data(scoring, recipe, scores)
    return probe_bars(values, scoring.domains, colours=BAR_COLOURS, intervals=intervals, test_clips=counts)


def curves(service, session, sources: dict, recipe: MergeRecipe | None = None) -> tuple[dict, bool]:
    """The full-suite curves to draw: linear and permute of the chosen speech/music pair, and `recipe`'s own family
    when it is another; and whether every baseline point is scored."""
    lab, scoring = service.lab, service.scoring
    baseline = lab.curve_recipes(session, sources["speech"], sources["music"]) if sources.get("speech") else []
    shown, complete = {}, True
    for method in dict.fromkeys(r.method for r in baseline):
        first = next(r for r in baseline if r.method == method)
        shown[method] = [p.as_plot() for p in scoring.curve(first)]
        complete = complete and len(scoring.book.curve(first)) >= sum(r.method == method for r in baseline)
    if recipe is not None and recipe.placed is not None and not any(r.family == recipe.family for r in baseline):
        shown[f"{recipe.method} (these settings)"] = [p.as_plot() for p in scoring.curve(recipe)]
    return {name: points for name, points in shown.items() if points}, complete


def marker(recipe: MergeRecipe, scores: LiveScores) -> dict:
    """A merge's point on the trade-off plane at one stage, with its intervals."""
    placed = recipe.placed
    return point(placed[0] if placed else 0.5, placed[1] if placed else recipe.method, scores).as_plot()


def curve_figure(service, session, sources: dict, recipe: MergeRecipe, scores: LiveScores):
    """The trade-off plot with this merge starred at its stage and the person's previous merge beside it."""
    drawn, complete = curves(service, session, sources, recipe)
    before = session.previous and latest_like(service.scoring.book.stages(session.previous.recipe), scores)
    note = "" if complete else " (full-suite curves being computed)"
    return tradeoff_curve(drawn, current=marker(recipe, scores),
                          previous=marker(session.previous.recipe, before) if before else None,
                          title=f"speech/music trade-off (full suite), this merge: {scores.stage}{note}")


def stage_status(scores: LiveScores, refining: bool, recipe: MergeRecipe) -> str:
    clips = f"{scores.clips:,} clips"
    if scores.stage == "full":
        return f"**stage: full suite** · {clips}, the benchmark's probes: final"
    per_class = f"{scores.per_class} train / {scores.per_class} test clips per class"
    note = (f"corrected by {len(scores.references)} encoders already scored on the full suite (inputs and earlier "
            "merges); 95 % intervals for the full suite's scores" if scores.corrected else
            "uncorrected: the scores on these clips (the inputs' full-suite scores are still being computed)")
    return (f"**stage: {app_text.STAGE_NAMES.get(scores.stage, scores.stage)}** · {per_class}, {clips} · {note}"
            + app_text.placement_note(recipe) + (" · refining…" if refining else ""))


def stream(service, session, sources: dict, lease, merged_line: str, summary: dict) -> Iterator[tuple]:
    """(session, status, bars, curve, summary): the session with its new merge at once, then one per stage of the
    merge until the full suite or a newer release; between stages, at most every PROGRESS_SECONDS, the status line
    alone says how far it got (every yield is a point where the page can stop the work)."""
    lab, scoring = service.lab, service.scoring
    recipe, shown, said = session.merged.recipe, None, time.monotonic()
    yield (session, f"{merged_line}  \n{app_text.progress_line(None, 0.0, scoring.inputs_known(recipe))}", gr.skip(),
           gr.skip(), gr.skip())
    for fraction, scores in scoring.stream(recipe, lease):
        if scores is None:
            if time.monotonic() - said >= PROGRESS_SECONDS:
                said = time.monotonic()
                line = app_text.progress_line(shown, fraction, scoring.inputs_known(recipe))
                yield gr.skip(), f"{merged_line}  \n{line}", gr.skip(), gr.skip(), gr.skip()
            continue
        shown = scores
        against = compared(scoring, session, scores)
        summary = {**summary, **scores.summary(), "probes": app_text.probes_line(scores), "compared": against}
        session = lab.with_stage(session, summary)
        status = f"{merged_line}  \n{stage_status(scores, fraction < 1.0, recipe)}{app_text.comparison_lines(against)}"
        said = time.monotonic()
        yield (session, status, bars(scoring, recipe, scores), curve_figure(service, session, sources, recipe, scores),
               summary)

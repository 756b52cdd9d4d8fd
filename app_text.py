"""The words and tables the app shows for the service's values (merging.service returns data, not text)."""
from __future__ import annotations

from collections.abc import Mapping

from merging.methods import get_method
from merging.service.alignment_summary import mean_matched
from merging.service.lab import EncoderRow
from merging.service.session import ClipReport, MergeRecipe, MergeResult

ROLE_TITLES = {
    "speech": "speech encoder",
    "music": "music encoder",
    "student_base": "student base (task vectors)",
    "student_speech": "speech student",
    "student_music": "music student",
    "speech_ft": "fine-tuned speech encoder",
}
ENCODER_HEADERS = ["role", "encoder", "parameters", "sample rate", "device"]
CLIP_HEADERS = ["task", "speech", "merged", "music"]
NO_MERGE = "merge first (step 3)"
STAGE_NAMES = {"quick": "quick estimate", "full": "full suite (the benchmark's scores)"}


def display_role(role: str) -> str:
    """A method input's role as a column or bar name."""
    return {"pretrained": "speech", "finetuned": "fine-tuned"}.get(role, role)


def encoder_rows(rows: list[EncoderRow], merge_device: str) -> list[list[str]]:
    return [[ROLE_TITLES[row.role], row.key, "—", "—", "none chosen" if not row.key else "not loaded"] if row.error else
            [ROLE_TITLES[row.role], row.key, f"{row.parameters / 1e6:.2f} M", f"{row.sample_rate} Hz",
             f"{row.device} (merges run on {merge_device})"] for row in rows]


def align_status(alignment, speech: str, music: str, calibration: str) -> str:
    before, after = mean_matched(alignment)
    return (f"Aligned **{music}** to **{speech}**: {len(alignment.groups)} groups on {calibration} · "
            f"mean matched correlation **{before:.2f} → {after:.2f}**")


def params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def merged_line(merged: MergeResult) -> str:
    """What was merged, how fast and where: the line above the streamed stages, which say how it scores."""
    return (f"**{merged.method}** {params_text(merged.params)} · merged in {merged.merge_seconds:.2f} s "
            f"on **{merged.device}**")


def merge_summary(merged: MergeResult) -> dict:
    """The JSON summary of a merge (the /merge endpoint's fourth output), before the live stages add its scores:
    every argument (defaults included) and where the merge sits on the speech–music axis."""
    placed = merged.recipe.placed
    placement = get_method(merged.method).placement
    return {
        "method": merged.method,
        "params": merged.params,
        "inputs": merged.sources,
        "device": merged.device,
        "merge_seconds": round(merged.merge_seconds, 3),
        "position": None if placed is None else {"value": round(placed[0], 4), "label": placed[1],
                                                 "meaning": "between its inputs" if placement.exact else "a label only"},
    }


def placement_note(recipe: MergeRecipe) -> str:
    """What the quick stages' correction rests on, when the merge's position is not a point between its inputs."""
    placement = get_method(recipe.method).placement
    if placement is None:
        return " · not placed between its inputs: corrected by their mean gap"
    if not placement.exact:
        return " · its position (λ music's share) is a label, not a point between its inputs"
    return ""


def probes_line(scores) -> str:
    return f"{scores.stage}: {scores.clips} clips" + ("" if scores.stage == "full" else ", corrected by both inputs")


def progress_line(shown, fraction: float, inputs_known: bool) -> str:
    """The status while a stage computes: before the first answer, or refining after it."""
    if shown is None:
        return "**computing the quick estimate…**" + ("" if inputs_known else
                                                     " (scoring the inputs on the full suite first: once per encoder)")
    return f"**stage: {STAGE_NAMES.get(shown.stage, shown.stage)}** · refining… {fraction:.0%} of the suite's clips"


def by_display_role(scores: Mapping[str, dict]) -> dict[str, dict]:
    return {display_role(role): value for role, value in scores.items()}


def top_prediction(probabilities: Mapping[str, float]) -> str:
    label, p = max(probabilities.items(), key=lambda item: item[1])
    return f"{label} ({p:.0%})"


def clip_table(report: ClipReport) -> dict:
    columns = list(report.predictions)
    rows = [[task, *(top_prediction(report.predictions[c][task]) if report.predictions[c] else NO_MERGE for c in columns)]
            for task in report.tasks]
    return {"headers": ["task", *map(display_role, columns)], "data": rows}


def clip_status(report: ClipReport) -> str:
    names = " · ".join(f"{display_role(role)} = {key}" for role, key in report.inputs)
    return " · ".join([f"{report.clip_name}: {report.seconds:.1f} s · {names}", *report.warnings])


MESSAGE_LIMIT = 300  # characters of a toast


def one_line(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """A message as one line of at most `limit` characters (a client's long input is never echoed whole)."""
    line = " ".join(message.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"

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
STAGE_NAMES = {"uncorrected": "first answer (these clips only)", "quick": "quick estimate",
               "full": "full suite (the benchmark's scores)"}


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
    """Where the trade-off plot draws a merge whose position is not a point between its inputs."""
    placement = get_method(recipe.method).placement
    if placement is None:
        return " · drawn mid-way on the trade-off plot: the method has no position between its inputs"
    if not placement.exact:
        return " · its place on the trade-off plot (λ music's share) is a label, not a point between its inputs"
    return ""


def probes_line(scores) -> str:
    if scores.stage == "full":
        return f"full: {scores.clips} clips"
    return f"{scores.stage}: {scores.clips} clips, " + (f"corrected by {len(scores.references)} references"
                                                       if scores.corrected else "uncorrected")


COMPARED_WITH = {"previous": "your last merge", "speech_input": "the speech input", "music_input": "the music input"}
AVERAGE_NAMES = {"avg": "overall", "speech_avg": "speech", "music_avg": "music"}


def comparison_line(target: str, differences: Mapping[str, list]) -> str:
    """'over your last merge: music +4.2 [+1.1, +7.0]; speech, overall: no detectable difference'."""
    called = [f"{AVERAGE_NAMES[name]} {value:+.1f} [{low:+.1f}, {high:+.1f}]"
              for name, (value, low, high) in differences.items() if low > 0 or high < 0]
    unclear = [AVERAGE_NAMES[name] for name, (_, low, high) in differences.items() if low <= 0 <= high]
    what = COMPARED_WITH.get(target, target.replace("_input", " input").replace("_", " "))
    parts = [", ".join(called)] if called else []
    if unclear:
        parts.append(f"{', '.join(unclear)}: no detectable difference")
    return f"against {what}: " + "; ".join(parts)


def comparison_lines(compared: Mapping[str, Mapping[str, list]]) -> str:
    """The comparisons as lines under the stage's status (the previous merge first)."""
    order = sorted(compared, key=lambda target: target != "previous")
    return "".join(f"  \n{comparison_line(target, compared[target])}" for target in order)


def progress_line(shown, fraction: float, inputs_known: bool) -> str:
    """The status while a stage computes: before the first answer, or refining after it."""
    if shown is None:
        return "**computing the quick estimate…**" + ("" if inputs_known else
                                                     " (the inputs are scored on the full suite meanwhile, once per encoder)")
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

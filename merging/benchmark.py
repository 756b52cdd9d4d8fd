"""The benchmark table: probe scores of the built-in encoders and of every merge method."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import HubertModel

from .align import PAPER_COMPONENTS
from .encoders import Encoder, encoder_from_state, load_encoder
from .pipeline import align, merge_encoders
from .probes import ProbeScores, ProbeSuite

MODELS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
MODEL_NAMES = {
    "speech": "tiny-hubert-speech",
    "music": "tiny-mert-music",
    "student_base": "tiny-base",
    "student_speech": "tiny-student-speech",
    "student_music": "tiny-student-music",
    "student_multi": "tiny-student-multi",
    "speech_ft": "tiny-hubert-speech-ft",
}


@dataclass
class Row:
    name: str
    method: str | None
    alpha: float | None
    scores: ProbeScores

    def as_dict(self) -> dict:
        return {"name": self.name, "method": self.method, "alpha": self.alpha, **self.scores.as_row()}


def find_models(locations: Sequence[str | Path] = (MODELS_DIR,)) -> dict[str, Path]:
    """Model directories by role: each location is a folder of the named models or `role=PATH`."""
    found: dict[str, Path] = {}
    for location in locations:
        location = str(location)
        if "=" in location:
            role, path = location.split("=", 1)
            found[role] = Path(path)
            continue
        for role, name in MODEL_NAMES.items():
            if (Path(location) / name).is_dir():
                found.setdefault(role, Path(location) / name)
    return found


def random_init(like: Encoder, seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    model = HubertModel(like.config).eval()
    return Encoder(model=model, sample_rate=like.sample_rate, normalize=like.normalize, name="random init", source=f"seed {seed}")


def _merged(method: str, encoders: dict[str, Encoder], alignments=None, **params) -> Encoder:
    first = encoders[next(iter(encoders))]
    state = merge_encoders(method, encoders, alignments=alignments, **params)
    return encoder_from_state(first.config, state, sample_rate=first.sample_rate, normalize=first.normalize,
                              name=method, source="merged")


LAMBDA_GRID = (0.5, 0.6, 0.75, 0.9, 1.0)


def _chosen_lambdas(validation: ProbeSuite, trio: dict[str, Encoder], seed: int, log) -> tuple[float, float]:
    scores = {lam: validation.score(_merged("task_arithmetic", trio, lambda_speech=lam, lambda_music=lam), seed=seed).average()
              for lam in LAMBDA_GRID}
    best = max(scores, key=scores.get)
    log("  task arithmetic λ on the validation split: " + ", ".join(f"{lam:g}: {v:.1f}" for lam, v in scores.items())
        + f" -> {best:g}")
    return best, best


def benchmark_rows(
    suite: ProbeSuite,
    models: dict[str, Path],
    *,
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    calibration: Sequence | None = None,
    components: Sequence[str] = PAPER_COMPONENTS,
    lambdas: tuple[float, float] | None = None,
    speech_ft_alpha: float = 0.25,
    seed: int = 0,
    log=print,
) -> list[Row]:
    """Every row of the table, in the issue's order; rows whose models are missing are skipped (logged).
    `lambdas=None` picks task arithmetic's λ_speech = λ_music from LAMBDA_GRID by the probes' average on a
    validation split of the training clips (the test split stays unseen)."""
    rows: list[Row] = []

    def add(name, method, alpha, encoder):
        start = time.perf_counter()
        rows.append(Row(name, method, alpha, suite.score(encoder, seed=seed)))
        log(f"  {name:<28} avg {rows[-1].scores.average():5.1f}  ({time.perf_counter() - start:.1f}s)")

    enc = {role: load_encoder(path) for role, path in models.items()}
    if "speech" in enc and "music" in enc:
        speech, music = enc["speech"], enc["music"]
        add("speech encoder", None, None, speech)
        add("music encoder", None, None, music)
        add("random init", None, None, random_init(speech, seed))
        pair = {"speech": speech, "music": music}
        alignment = align(speech, music, clips=calibration, components=components) if calibration is not None else None
        for alpha in alphas:
            add(f"linear@{alpha:g}", "linear", alpha, _merged("linear", pair, alpha=alpha))
        if alignment is not None:
            for alpha in alphas:
                add(f"permute@{alpha:g}", "permute", alpha, _merged("permute", pair, {"music": alignment}, alpha=alpha))
    else:
        log("  (speech/music encoders missing: their rows are skipped)")
    students = {"base": "student_base", "speech": "student_speech", "music": "student_music"}
    if all(role in enc for role in students.values()):
        trio = {key: enc[role] for key, role in students.items()}
        ls, lm = lambdas or _chosen_lambdas(suite.validation(), trio, seed, log)
        add(f"task_arithmetic@{ls:g}/{lm:g}", "task_arithmetic", None,
            _merged("task_arithmetic", trio, lambda_speech=ls, lambda_music=lm))
        add("ties", "ties", None, _merged("ties", trio))
        add("dare", "dare", None, _merged("dare", trio, seed=seed))
        add("drm", "drm", None, _merged("drm", trio))
    else:
        log("  (students missing: task-vector rows are skipped)")
    if "student_multi" in enc:
        add("multi-teacher student", None, None, enc["student_multi"])
    if "speech" in enc and "speech_ft" in enc:
        pair = {"pretrained": enc["speech"], "finetuned": enc["speech_ft"]}
        add(f"speech_ft@{speech_ft_alpha:g}", "speech_ft", speech_ft_alpha, _merged("speech_ft", pair, alpha=speech_ft_alpha))
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    tasks = list(rows[0].scores.accuracy)
    header = ["model", *tasks, "speech avg", "music avg", "avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.name, *(f"{row.scores.accuracy[t]:.1f}" for t in tasks),
                 *(f"{v:.1f}" for v in (row.scores.average("speech"), row.scores.average("music"), row.scores.average()))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(rows: Sequence[Row], path: str | Path) -> None:
    Path(path).write_text(json.dumps({"rows": [row.as_dict() for row in rows]}, indent=2))


def write_sweep(rows: Sequence[Row], path: str | Path) -> tuple[Path, Path]:
    """The speech/music trade-off over alpha for linear and permute, as JSON and a plotly HTML page."""
    from viz.figures import tradeoff_curve

    curves = {method: [{"alpha": r.alpha, "speech_avg": r.scores.average("speech"), "music_avg": r.scores.average("music")}
                       for r in rows if r.method == method] for method in ("linear", "permute")}
    json_path = Path(path)
    json_path.write_text(json.dumps(curves, indent=2))
    html_path = json_path.with_suffix(".html")
    tradeoff_curve(curves).write_html(html_path, include_plotlyjs=True)
    return json_path, html_path

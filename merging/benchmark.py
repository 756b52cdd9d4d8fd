"""The benchmark table: probe scores of the built-in encoders and of every merge method."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .align import PAPER_COMPONENTS
from .catalogue import MODEL_NAMES, MODELS_DIR
from .encoders import Encoder, load_encoder, random_init
from .methods import METHODS
from .pipeline import align, merged_encoder
from .probes import ProbeScores, ProbeSuite
from .stats import RESAMPLES, difference_interval
from .tradeoff import ALPHA_GRID, LAMBDA_GRID


INTERVAL_FIELDS = {"avg_ci": None, "speech_avg_ci": "speech", "music_avg_ci": "music"}


@dataclass(frozen=True)
class Row:
    name: str
    method: str | None
    alpha: float | None
    scores: ProbeScores
    params: dict = field(default_factory=dict)  # the method's parameters other than alpha (e.g. the chosen λs)

    def as_dict(self, seed: int = 0) -> dict:
        intervals = {key: list(self.scores.interval(domain, seed=seed)) for key, domain in INTERVAL_FIELDS.items()}
        return {"name": self.name, "method": self.method, "alpha": self.alpha, "params": dict(self.params),
                **self.scores.as_row(), **intervals,
                "scores_ci": {task: list(self.scores.interval(task=task, seed=seed)) for task in self.scores.accuracy},
                "test_clips": self.scores.test_clips,
                "correct": {task: "".join("1" if c else "0" for c in hits) for task, hits in self.scores.correct.items()}}


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


TASK_VECTOR_INPUTS = ("base", "speech", "music")
# task addition: task arithmetic with λs = λm, so the two task vectors may add up to more than one
ADDITION_GRID = ((0.5, 0.5), (0.6, 0.6), (0.75, 0.75), (0.9, 0.9), (1.0, 1.0))


def task_vector_methods() -> list[str]:
    """Registered methods that merge the speech and music task vectors over a shared base, in registry order."""
    return [name for name, method in METHODS.items() if method.task_vector and method.inputs == TASK_VECTOR_INPUTS]


def _lambda_params(method: str, pair: tuple[float, float], seed: int) -> dict:
    params = {"lambda_speech": pair[0], "lambda_music": pair[1]}
    if "seed" in METHODS[method].parameters:
        params["seed"] = seed
    return params


def choose_lambdas(validation: ProbeSuite, method: str, trio: dict[str, Encoder], grid, seed: int, log,
                   label: str | None = None) -> tuple[float, float]:
    """The grid's (λs, λm) with the best probe average on `validation` (the first one on a tie)."""
    scores = {pair: validation.score(merged_encoder(method, trio, **_lambda_params(method, pair, seed)), seed=seed).average()
              for pair in grid}
    best = max(scores, key=scores.get)
    log(f"  {label or method} λ on the validation split: "
        + ", ".join(f"{ls:g}/{lm:g}: {v:.1f}" for (ls, lm), v in scores.items()) + f" -> {best[0]:g}/{best[1]:g}")
    return best


def benchmark_rows(
    suite: ProbeSuite,
    models: dict[str, Path],
    *,
    alphas: Sequence[float] = ALPHA_GRID,
    calibration: Sequence | None = None,
    components: Sequence[str] = PAPER_COMPONENTS,
    lambdas: tuple[float, float] | None = None,
    speech_ft_alpha: float = 0.25,
    seed: int = 0,
    log=print,
) -> list[Row]:
    """Every row of the table (the encoders, linear and permute over `alphas`, the task-vector methods, the
    multi-teacher student, speech_ft); rows whose models are missing are skipped (logged).
    Every task-vector method (inputs base, speech, music in the registry) gets its (λs, λm) from LAMBDA_GRID
    by the probes' average on a validation split of the training clips (the test split stays unseen), its
    other parameters at their defaults; task arithmetic also gets a `task_addition` row chosen the same way
    from ADDITION_GRID. `lambdas` fixes the pair for every task-vector method (and drops the addition row)."""
    rows: list[Row] = []

    def add(name, method, alpha, encoder, params=None):
        start = time.perf_counter()
        rows.append(Row(name, method, alpha, suite.score(encoder, seed=seed), dict(params or {})))
        low, high = rows[-1].scores.interval(seed=seed)
        log(f"  {name:<28} avg {rows[-1].scores.average():5.1f} [{low:.1f}, {high:.1f}]  ({time.perf_counter() - start:.1f}s)")

    enc = {role: load_encoder(path) for role, path in models.items()}
    if "speech" in enc and "music" in enc:
        speech, music = enc["speech"], enc["music"]
        add("speech encoder", None, None, speech)
        add("music encoder", None, None, music)
        add("random init", None, None, random_init(speech, seed))
        pair = {"speech": speech, "music": music}
        alignment = align(speech, music, clips=calibration, components=components) if calibration is not None else None
        for alpha in alphas:
            add(f"linear@{alpha:g}", "linear", alpha, merged_encoder("linear", pair, alpha=alpha))
        if alignment is not None:
            for alpha in alphas:
                add(f"permute@{alpha:g}", "permute", alpha, merged_encoder("permute", pair, {"music": alignment}, alpha=alpha))
    else:
        log("  (speech/music encoders missing: their rows are skipped)")
    students = {"base": "student_base", "speech": "student_speech", "music": "student_music"}
    if all(role in enc for role in students.values()):
        trio = {key: enc[role] for key, role in students.items()}
        validation = suite.validation()
        settings = []
        for method in task_vector_methods():
            settings.append((method, method, LAMBDA_GRID, method))
            if method == "task_arithmetic" and lambdas is None:  # right after it: its 0.5/0.5 merge is still cached
                settings.append((method, "task_addition", ADDITION_GRID, "task addition (λs = λm)"))
        for method, name, grid, label in settings:
            # choose, then score at once: the chosen merge's features are still in the suite's cache
            ls, lm = lambdas or choose_lambdas(validation, method, trio, grid, seed, log, label=label)
            params = _lambda_params(method, (ls, lm), seed)
            add(f"{name}@{ls:g}/{lm:g}", method, None, merged_encoder(method, trio, **params), params)
    else:
        log("  (students missing: task-vector rows are skipped)")
    if "student_multi" in enc:
        add("multi-teacher student", None, None, enc["student_multi"])
    if "speech" in enc and "speech_ft" in enc:
        pair = {"pretrained": enc["speech"], "finetuned": enc["speech_ft"]}
        add(f"speech_ft@{speech_ft_alpha:g}", "speech_ft", speech_ft_alpha, merged_encoder("speech_ft", pair, alpha=speech_ft_alpha))
    return rows


def _with_interval(value: float, interval: tuple[float, float]) -> str:
    return f"{value:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]"


def markdown_table(rows: Sequence[Row], seed: int = 0) -> str:
    """Accuracy per task, and each average with its 95 % bootstrap interval over test clips."""
    tasks = list(rows[0].scores.accuracy)
    header = ["model", *tasks, "speech avg", "music avg", "avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        averages = [_with_interval(row.scores.average(domain), row.scores.interval(domain, seed=seed))
                    for domain in ("speech", "music", None)]
        cells = [row.name, *(f"{row.scores.accuracy[t]:.1f}" for t in tasks), *averages]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(rows: Sequence[Row], path: str | Path, seed: int = 0) -> None:
    Path(path).write_text(json.dumps({"interval": "95 % percentile bootstrap over test clips, tasks that label the "
                                                  f"same clips resampled together, {RESAMPLES} resamples, seed {seed}",
                                      "domains": rows[0].scores.domains if rows else {},
                                      "test_clip_ids": {t: list(ids) for t, ids in rows[0].scores.clips.items()} if rows else {},
                                      "rows": [row.as_dict(seed) for row in rows]}, indent=2))


def load_rows(path: str | Path) -> list[Row]:
    """The rows of a `write_json` file, per-clip results included (for comparisons after the run)."""
    data = json.loads(Path(path).read_text())
    return [Row(entry["name"], entry["method"], entry["alpha"],
                ProbeScores(entry["scores"], data["domains"],
                            {task: tuple(c == "1" for c in hits) for task, hits in entry["correct"].items()},
                            {task: tuple(ids) for task, ids in data["test_clip_ids"].items()}),
                entry["params"]) for entry in data["rows"]]


def difference(first: Row, second: Row, domain: str | None = None, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """first's average minus second's (of a domain, or overall) and its 95 % paired bootstrap interval:
    both rows are scored on the same test clips, so the same resampled clips enter both averages."""
    tasks = [t for t in first.scores.accuracy if domain is None or first.scores.domains[t] == domain]
    interval = difference_interval({t: first.scores.correct[t] for t in tasks}, {t: second.scores.correct[t] for t in tasks},
                                   first.scores.clips, seed=seed)
    return first.scores.average(domain) - second.scores.average(domain), interval


def sweep_curves(rows: Sequence[Row]) -> dict[str, list[dict]]:
    """The speech/music trade-off over α of the linear and permute rows, with the averages' intervals."""
    return {method: [{"alpha": r.alpha, "speech_avg": r.scores.average("speech"), "music_avg": r.scores.average("music"),
                      "speech_avg_ci": list(r.scores.interval("speech")), "music_avg_ci": list(r.scores.interval("music"))}
                     for r in rows if r.method == method] for method in ("linear", "permute")}

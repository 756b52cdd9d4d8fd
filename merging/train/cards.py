"""Model cards (README.md) of the built-in encoders: how each was made and what its probes score."""
from __future__ import annotations

import json
from pathlib import Path

from ..encoders import random_init
from ..encoders import load_encoder
from ..probes import ProbeScores, ProbeSuite, builtin_suite
from . import MODELS_DIR, RECIPES


def _score_line(scores: ProbeScores) -> str:
    tasks = ", ".join(f"{task} {acc:.1f}" for task, acc in scores.accuracy.items())
    return (f"speech average **{scores.average('speech'):.1f}**, music average **{scores.average('music'):.1f}**, "
            f"overall **{scores.average():.1f}** ({tasks})")


def card(record: dict, scores: ProbeScores, random_scores: ProbeScores) -> str:
    data = "; ".join(f"{info['clips']} synthetic {name} clips of {info['seconds']:g} s (`merging.synth`, seed "
                     f"{info['synth_seed']})" for name, info in record["data"].items())
    extra = "".join(f"- {label}: {record[key] if isinstance(record[key], str) else ', '.join(record[key])}\n"
                    for key, label in (("init", "initialised from"), ("teachers", "teachers")) if key in record)
    return f"""# {record['model']}

{record['summary']}. Built by this project's recipe: `python -m merging.train {_key(record['model'])}`
(every model: `python -m merging.train all`). transformers `HubertModel` format, 16 kHz, no input normalisation.

- data: {data}
- objective: {record['objective']}
- steps: {record['steps']} of {record['batch_size']} clips, AdamW peak lr {record['lr']:g}, seed {record['seed']}
- loss: {record['first_loss']} at the first step, {record['final_loss']} over the last tenth
- parameters: {record['parameters']:,}
- wall time: {record['wall_seconds']:.0f} s on {record['machine']}
{extra}
## Probe scores
Built-in probe tasks (`merging.probes.builtin_suite`, test split, accuracy %):
{_score_line(scores)}.

A random-init encoder of the same config scores {_score_line(random_scores)}.
"""


def _key(model_name: str) -> str:
    return next(key for key, recipe in RECIPES.items() if recipe.name == model_name)


def write_cards(out: Path = MODELS_DIR, suite: ProbeSuite | None = None) -> dict[str, dict]:
    """Score every built model with the probes and write its README.md; returns the scores by model."""
    suite = suite or builtin_suite()
    results, random_scores = {}, {}
    for recipe in RECIPES.values():
        folder = out / recipe.name
        if not (folder / "training.json").is_file():
            continue
        record = json.loads((folder / "training.json").read_text())
        encoder = load_encoder(folder)
        layers = encoder.config.num_hidden_layers
        if layers not in random_scores:
            random_scores[layers] = suite.score(random_init(encoder))
        scores = suite.score(encoder)
        (folder / "README.md").write_text(card(record, scores, random_scores[layers]))
        results[recipe.name] = scores.as_row()
    return results

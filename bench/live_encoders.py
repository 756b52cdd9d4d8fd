"""The fixed merge settings bench_live_scores.py measures, built from the built-in encoders.

Each setting names the two inputs whose full-suite scores correct its quick estimate and its position
between them (α, or λ_music / (λ_speech + λ_music) for task vectors).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from merging.calibration import builtin_calibration  # noqa: E402
from merging.catalogue import MODEL_NAMES, MODELS_DIR, method_roles  # noqa: E402
from merging.encoders import Encoder, load_encoder  # noqa: E402
from merging.pipeline import align, merged_encoder  # noqa: E402
from merging.registry import get_method  # noqa: E402


@dataclass(frozen=True)
class Setting:
    name: str
    method: str | None  # None: an unmerged encoder
    params: dict
    parents: tuple[str, str]  # roles of the two inputs
    position: float


SETTINGS = (
    Setting("speech encoder", None, {}, ("speech", "music"), 0.0),
    Setting("music encoder", None, {}, ("speech", "music"), 1.0),
    *(Setting(f"{m}@{a:g}", m, {"alpha": a}, ("speech", "music"), a) for m in ("linear", "permute") for a in (0.1, 0.5, 0.9)),
    Setting("task_arithmetic@0.9/0.9", "task_arithmetic", {"lambda_speech": 0.9, "lambda_music": 0.9},
            ("student_speech", "student_music"), 0.5),
    Setting("ties", "ties", {}, ("student_speech", "student_music"), 0.5),
    Setting("drm", "drm", {}, ("student_speech", "student_music"), 0.5),
    Setting("speech_ft@0.25", "speech_ft", {"alpha": 0.25}, ("speech", "speech_ft"), 0.25),
)
PARENT_ROLES = ("speech", "music", "student_speech", "student_music", "speech_ft")


def load_models() -> dict[str, Encoder]:
    return {role: load_encoder(MODELS_DIR / name) for role, name in MODEL_NAMES.items() if role != "student_multi"}


def build(setting: Setting, models: dict[str, Encoder], alignment=None) -> Encoder:
    """The setting's encoder (the unmerged parent itself for a parent row)."""
    if setting.method is None:
        return models[setting.parents[int(setting.position)]]
    inputs = {role: models[catalogue_role] for role, catalogue_role in method_roles(setting.method).items()}
    aligns = get_method(setting.method).aligns
    return merged_encoder(setting.method, inputs, {aligns: alignment} if aligns else None, **setting.params)


def speech_music_alignment(models: dict[str, Encoder]):
    clips, _ = builtin_calibration()
    return align(models["speech"], models["music"], clips=clips)

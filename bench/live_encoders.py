"""The merges bench_live_scores.py measures, built from the built-in encoders: a spread set from the unmerged inputs
to failed and good merges of every method, and the references the app would have after its start-up (the inputs it
scores and the linear and permute curves over the α grid)."""
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
from merging.tradeoff import ALPHA_GRID, LAMBDA_GRID, grid  # noqa: E402


@dataclass(frozen=True)
class Setting:
    name: str
    method: str | None  # None: the unmerged encoder of `role`
    params: dict
    role: str | None = None


INPUTS = ("speech", "music", "student_speech", "student_music", "speech_ft")  # every merge's inputs: references
SETTINGS = (
    Setting("speech encoder", None, {}, "speech"),
    Setting("music encoder", None, {}, "music"),
    *(Setting(f"{m}@{a:g}", m, {"alpha": a}) for m in ("linear", "permute") for a in ALPHA_GRID),
    *(Setting(f"task_arithmetic@{s:g}/{m:g}", "task_arithmetic", {"lambda_speech": s, "lambda_music": m})
      for s, m in LAMBDA_GRID),
    *(Setting(f"{method}@{s:g}/{m:g}", method, {"lambda_speech": s, "lambda_music": m})
      for method in ("ties", "dare", "drm") for s, m in ((0.7, 0.3), (0.3, 0.7))),
    Setting("multi-teacher student", None, {}, "student_multi"),
    *(Setting(f"speech_ft@{a:g}", "speech_ft", {"alpha": a}) for a in (0.25, 0.5)),
)
# the inputs of the merges above that are not rows of their own, scored only as references
INPUT_ROWS = tuple(Setting(role, None, {}, role) for role in INPUTS if role not in {s.role for s in SETTINGS})
# the merges the app scores on the full suite at start-up: its references beside the inputs
STARTUP = tuple(f"{method}@{setting['alpha']:g}" for method in ("linear", "permute") for setting in grid(method))


def load_models() -> dict[str, Encoder]:
    return {role: load_encoder(MODELS_DIR / name) for role, name in MODEL_NAMES.items()}


def build(setting: Setting, models: dict[str, Encoder], alignment=None) -> Encoder:
    """The setting's encoder (the unmerged one itself for an input's row)."""
    if setting.method is None:
        return models[setting.role]
    inputs = {role: models[catalogue_role] for role, catalogue_role in method_roles(setting.method).items()}
    aligns = get_method(setting.method).aligns
    return merged_encoder(setting.method, inputs, {aligns: alignment} if aligns else None, **setting.params)


def speech_music_alignment(models: dict[str, Encoder]):
    clips, _ = builtin_calibration()
    return align(models["speech"], models["music"], clips=clips)

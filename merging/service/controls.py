"""The page's controls as library values: which chosen encoder fills each input of a method, the text of
the per-layer α box, and the sliders as a method's parameters."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from ..state import MergeError

# The encoders a person chooses, by lab role (the app titles them).
LAB_ROLES = ("speech", "music", "student_base", "student_speech", "student_music", "speech_ft")
_TASK_VECTOR_ROLES = {"base": "student_base", "speech": "student_speech", "music": "student_music"}
# Which chosen encoder fills each input of a method.
METHOD_ROLES: dict[str, dict[str, str]] = {
    "linear": {"speech": "speech", "music": "music"},
    "permute": {"speech": "speech", "music": "music"},
    "task_arithmetic": _TASK_VECTOR_ROLES,
    "ties": _TASK_VECTOR_ROLES,
    "dare": _TASK_VECTOR_ROLES,
    "drm": _TASK_VECTOR_ROLES,
    "speech_ft": {"pretrained": "speech", "finetuned": "speech_ft"},
}
# Methods whose trade-off is one interpolation weight α from the first input (α=0) to the second (α=1).
ALPHA_METHODS = ("linear", "permute", "speech_ft")
SWEEP_ALPHAS = (0.1, 0.25, 0.5, 0.75)
SWEEP_LAMBDAS = ((0.9, 0.1), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.1, 0.9))
# Groups of lab roles that one method merges together, so must be compatible with each other.
ROLE_GROUPS = ({"speech", "music"}, set(_TASK_VECTOR_ROLES.values()), {"speech", "speech_ft"})


def method_inputs(method: str, sources: Mapping[str, str], default) -> dict[str, str]:
    """Method input role -> encoder key, from the chosen encoders by lab role (`default(role)` for a blank)."""
    if method not in METHOD_ROLES:
        raise MergeError(f"unknown method '{method}': choose from {', '.join(METHOD_ROLES)}")
    return {role: sources.get(lab_role) or default(lab_role) for role, lab_role in METHOD_ROLES[method].items()}


def parse_layer_alphas(text: str | None) -> list[float] | None:
    """'0.1, 0.2 0.3' -> [0.1, 0.2, 0.3]; empty -> None (one α everywhere)."""
    parts = [p for p in re.split(r"[,\s;]+", (text or "").strip()) if p]
    if not parts:
        return None
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise MergeError(f"per-layer α: '{part}' is not a number") from None
        if not math.isfinite(value):
            raise MergeError(f"per-layer α: '{part}' is not a finite number")
        values.append(value)
    return values


def merge_params(method: str, alpha: float, lambda_speech: float, lambda_music: float,
                 layer_alphas: Sequence[float] | None = None) -> dict:
    """The page's controls as the named method's arguments (each method takes only its own)."""
    if method not in METHOD_ROLES:
        raise MergeError(f"unknown method '{method}': choose from {', '.join(METHOD_ROLES)}")
    if method in ("linear", "permute"):
        return {"alpha": float(alpha), **({"layer_alphas": list(layer_alphas)} if layer_alphas else {})}
    if layer_alphas:
        raise MergeError(f"per-layer α applies to linear and permute, not to {method}: clear it")
    if method == "speech_ft":
        return {"alpha": float(alpha)}
    return {"lambda_speech": float(lambda_speech), "lambda_music": float(lambda_music)}


def sweep_settings(method: str) -> list[dict]:
    """The settings that fill a method's trade-off curve: α from 0.1 to 0.75, or λ pairs summing to 1."""
    if method in ALPHA_METHODS:
        return [{"alpha": a} for a in SWEEP_ALPHAS]
    return [{"lambda_speech": s, "lambda_music": m} for s, m in SWEEP_LAMBDAS]

"""The page's controls as library values: which chosen encoder fills each input of a method, the text of
the per-layer α box, and the sliders as a method's checked arguments (from the method registry)."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ..methods import METHODS
from ..registry import get_method, method_arguments
from ..state import MergeError

# The encoders a person chooses, by lab role (the app titles them).
LAB_ROLES = ("speech", "music", "student_base", "student_speech", "student_music", "speech_ft")
_PLAIN_ROLES = {"speech": "speech", "music": "music", "pretrained": "speech", "finetuned": "speech_ft"}
SWEEP_ALPHAS = (0.1, 0.25, 0.5, 0.75)
SWEEP_LAMBDAS = ((0.9, 0.1), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.1, 0.9))
QUOTE_LIMIT = 40  # characters of a person's input quoted back in a message


def method_roles(method: str) -> dict[str, str]:
    """Method input role -> the lab role whose chosen encoder fills it: task-vector methods take the students
    and their base, the others the full encoders (the fine-tuned copy for `finetuned`)."""
    declared = get_method(method)
    return {role: f"student_{role}" if declared.task_vector else _PLAIN_ROLES[role] for role in declared.inputs}


METHOD_ROLES: dict[str, dict[str, str]] = {name: method_roles(name) for name in METHODS}
# Methods whose trade-off is one interpolation weight α from the first input (α=0) to the second (α=1).
ALPHA_METHODS = tuple(name for name, method in METHODS.items() if method.interpolates)


def quoted(text: object, limit: int = QUOTE_LIMIT) -> str:
    """`text` quoted for a message, cut short: a message never echoes a whole megabyte back."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def method_inputs(method: str, sources: Mapping[str, str | None]) -> dict[str, str]:
    """Method input role -> encoder key, from the chosen encoders by lab role; MergeError for a role left empty."""
    inputs = {}
    for role, lab_role in method_roles(method).items():
        key = sources.get(lab_role)
        if not key:
            raise MergeError(f"{method} needs an encoder for its '{role}' input ({lab_role}): choose one")
        inputs[role] = key
    return inputs


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
            raise MergeError(f"per-layer α: {quoted(part)} is not a number") from None
        if not math.isfinite(value):
            raise MergeError(f"per-layer α: {quoted(part)} is not a finite number")
        values.append(value)
    return values


def merge_params(method: str, alpha: float, lambda_speech: float, lambda_music: float,
                 layer_alphas: list[float] | None = None) -> dict:
    """The page's controls as the named method's checked arguments (each method takes only its own)."""
    return method_arguments(method, {"alpha": alpha, "lambda_speech": lambda_speech, "lambda_music": lambda_music,
                                     "layer_alphas": layer_alphas})


def sweep_settings(method: str) -> list[dict]:
    """The settings that fill a method's trade-off curve: α from 0.1 to 0.75, or λ pairs summing to 1."""
    if method in ALPHA_METHODS:
        return [{"alpha": a} for a in SWEEP_ALPHAS]
    return [{"lambda_speech": s, "lambda_music": m} for s, m in SWEEP_LAMBDAS]

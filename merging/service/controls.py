"""The page's controls as library values: which chosen encoder fills each input of a method, and the controls'
values (one per registry parameter, per-layer values as text) as a method's checked arguments."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ..catalogue import method_roles
from ..registry import all_params, method_arguments
from ..state import MergeError, quoted

DEFAULT_METHOD = "permute"  # the method the page starts with


def method_inputs(method: str, sources: Mapping[str, str | None]) -> dict[str, str]:
    """Method input role -> encoder key, from the chosen encoders by lab role; MergeError for a role left empty."""
    inputs = {}
    for role, lab_role in method_roles(method).items():
        key = sources.get(lab_role)
        if not key:
            raise MergeError(f"{method} needs an encoder for its '{role}' input ({lab_role}): choose one")
        inputs[role] = key
    return inputs


def parse_layer_values(text: str | None, label: str = "per-layer α", pairs: bool = False) -> list | None:
    """'0.1, 0.2 0.3' -> [0.1, 0.2, 0.3] (pairs: '0.9/0.1, 0.5:0.5' -> [(0.9, 0.1), (0.5, 0.5)]); empty -> None."""
    parts = [p for p in re.split(r"[,\s;]+", (text or "").strip()) if p]
    if not parts:
        return None
    return [_pair(part, label) if pairs else _number(part, label) for part in parts]


def _number(part: str, label: str) -> float:
    try:
        value = float(part)
    except ValueError:
        raise MergeError(f"{label}: {quoted(part)} is not a number") from None
    if not math.isfinite(value):
        raise MergeError(f"{label}: {quoted(part)} is not a finite number")
    return value


def _pair(part: str, label: str) -> tuple[float, float]:
    values = re.split(r"[/:]", part)
    if len(values) != 2:
        raise MergeError(f"{label}: {quoted(part)} is not a speech/music pair such as 0.9/0.1")
    return _number(values[0], label), _number(values[1], label)


def merge_params(method: str, controls: Mapping[str, object]) -> dict:
    """The page's controls (by parameter name; per-layer values may be text) as the named method's checked
    arguments: each method takes only its own (see `registry.method_arguments`)."""
    kinds = {name: uses[0][1] for name, uses in all_params().items()}
    values = {}
    for name, value in controls.items():
        param = kinds.get(name)
        if param is None:
            raise MergeError(f"no merge method has a parameter {quoted(name)}")
        if param.kind in ("floats", "pairs") and (isinstance(value, str) or value is None):
            value = parse_layer_values(value, param.label, pairs=param.kind == "pairs")
        elif param.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)  # a slider sends 3.0 for 3 (2.5 stays refused)
        values[name] = value
    return method_arguments(method, values)

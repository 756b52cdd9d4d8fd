"""From loaded encoders to a merged state dict and its record: what the CLI and the app share."""
from __future__ import annotations

import datetime
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import transformers

from .align import Alignment, PAPER_COMPONENTS, Progress, correlation_align, weight_align
from .encoders import Encoder, check_compatible, encoder_from_state
from .methods import METHODS, get_method, merge
from .state import MergeError, StateDict, state_checksum


def align(
    speech: Encoder,
    music: Encoder,
    *,
    how: str = "correlation",
    clips: Sequence[np.ndarray] | None = None,
    sample_rate: int = 16000,
    components: Sequence[str] = PAPER_COMPONENTS,
    absolute: bool = True,
    progress: Progress | None = None,
) -> Alignment:
    """Align `music` to `speech` by activation correlation on `clips`, or by weights (data-free)."""
    check_compatible(speech.config, music.config)
    if how == "correlation":
        if clips is None:
            raise MergeError("correlation alignment needs calibration clips")
        return correlation_align(speech, music, clips, sample_rate, components=components, absolute=absolute, progress=progress)
    if how == "weights":
        from .spec import hubert_spec

        spec = hubert_spec(speech.config, list(speech.state_dict()))
        return weight_align(speech.state_dict(), music.state_dict(), spec, components=components, progress=progress)
    raise MergeError(f"unknown alignment '{how}': choose 'correlation' or 'weights'")


def merge_encoders(
    method: str,
    encoders: dict[str, Encoder],
    *,
    alignments: dict[str, Alignment] | None = None,
    device: str | torch.device | None = None,
    allow_rate_mismatch: bool = False,
    **params,
) -> StateDict:
    """Merge the encoders named by role ('speech', 'music', 'base', 'pretrained', 'finetuned').

    `alignments` maps a role to the alignment that moves it into the basis of the merge (the first
    input's: the speech encoder for `permute`, the base for task-vector methods). A method that declares
    `aligns` gets its input's alignment as the `alignment` argument; other alignments are applied first.
    """
    declared = get_method(method)
    roles = declared.inputs
    missing = [role for role in roles if role not in encoders]
    if missing:
        raise MergeError(f"method '{method}' needs the {' and '.join(missing)} encoder")
    first = encoders[roles[0]]
    for role in roles[1:]:
        check_compatible(first.config, encoders[role].config, names=(roles[0], role))
    check_sample_rates({role: encoders[role] for role in roles}, allow_rate_mismatch)
    states = {}
    for role in roles:
        state = encoders[role].state_dict()
        if device is not None:
            state = {name: tensor.to(device, non_blocking=True) for name, tensor in state.items()}
        if alignments and role in alignments and role != declared.aligns:
            state = alignments[role].apply(state)
        states[role] = state
    if declared.aligns:
        if not alignments or declared.aligns not in alignments:
            raise MergeError(f"method '{method}' needs an alignment of the {declared.aligns} encoder (run the alignment first)")
        params["alignment"] = alignments[declared.aligns]
    return merge(method, states, **params)


def merged_encoder(method: str, encoders: dict[str, Encoder], alignments: dict[str, Alignment] | None = None,
                   **params) -> Encoder:
    """`merge_encoders` as a runnable encoder with the first input's configuration, rate and normalisation."""
    first = encoders[get_method(method).inputs[0]]
    state = merge_encoders(method, encoders, alignments=alignments, **params)
    return encoder_from_state(first.config, state, sample_rate=first.sample_rate, normalize=first.normalize,
                              name=method, source="merged")


def check_sample_rates(encoders: dict[str, Encoder], allow_mismatch: bool = False) -> str | None:
    """None when every input takes audio at one rate. Otherwise MergeError naming the rates, or, when the
    mismatch is allowed explicitly, the warning to record and print: the merged encoder keeps the first
    input's front end and rate, and each CNN front end is tied to the rate it was trained on."""
    (first, encoder), *others = encoders.items()
    for role, other in others:
        if other.sample_rate != encoder.sample_rate:
            problem = (f"'{encoder.name}' ({first}) takes {encoder.sample_rate} Hz audio but '{other.name}' ({role}) "
                       f"takes {other.sample_rate} Hz: each CNN front end is tied to the sample rate it was trained on, "
                       f"and the merged encoder has one front end, at {encoder.sample_rate} Hz")
            if not allow_mismatch:
                raise MergeError(f"{problem}. Allow the mismatch explicitly to merge anyway "
                                 "(--allow-rate-mismatch; on the page, the 'allow different sample rates' box)")
            return f"merged despite different sample rates: {problem}"
    return None


def public_source(source: str) -> str:
    """Where an input came from, without the server's paths: a hub id as is, a local folder by its name."""
    return source if _is_hub_id(source) else Path(source).name


def _is_hub_id(source: str) -> bool:
    return not Path(source).is_absolute() and not Path(source).exists() and source.count("/") == 1


def merge_record(
    method: str,
    encoders: dict[str, Encoder],
    params: dict,
    alignments: dict[str, Alignment] | None = None,
    *,
    allow_rate_mismatch: bool = False,
) -> dict:
    """The merge_config.json content: method, arguments, inputs (hub id or folder name, never a server path),
    permutations, correlation summary, and the sample-rate warning when a mismatch was allowed."""
    roles = METHODS[method].inputs
    warning = check_sample_rates({role: encoders[role] for role in roles}, allow_rate_mismatch)
    return {
        "method": method,
        "arguments": {k: v for k, v in params.items() if k != "alignment"},
        "inputs": {
            role: {"source": public_source(encoders[role].source), "name": encoders[role].name,
                   "sample_rate": encoders[role].sample_rate, "checksum": state_checksum(encoders[role].state_dict())}
            for role in roles
        },
        **({"sample_rate_mismatch": warning} if warning else {}),
        "alignments": {role: alignment.summary() for role, alignment in (alignments or {}).items()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
    }

"""Units that fire together: one speech unit's activation over a clip beside its matched music unit's
and beside the music unit that held its index before the permutation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .align import Alignment, GroupAlignment
from .features import Tap, activation_taps, activations, encoder_input, match_frames
from .state import MergeError, quoted


@dataclass(frozen=True)
class UnitTraces:
    group: str
    speech_unit: int
    matched_unit: int  # the music unit the permutation moves to `speech_unit`'s index
    rank: int  # 0: the best-matched speech unit of the group
    units: int  # units in the group
    seconds: np.ndarray  # (frames,) time of each frame; for "res", each layer's pass follows the last
    speech: np.ndarray  # (frames,) activations
    matched: np.ndarray
    same_index: np.ndarray  # music unit `speech_unit`, where it sat before the permutation
    calibration: tuple[float, float]  # correlation with (matched, same index) over the calibration clips
    clip: tuple[float, float]  # ... over this clip alone (nan where a trace is flat)


def matched_scores(group: GroupAlignment, absolute: bool) -> np.ndarray:
    """Each speech unit's correlation with its matched music unit (absolute value when matched on it)."""
    similarity = group.similarity.numpy()
    scores = similarity[np.arange(len(group.perm)), group.perm.numpy()]
    return np.abs(scores) if absolute else scores


def pick_unit(group: GroupAlignment, which: str | int, absolute: bool) -> int:
    """A speech unit of the group: 'best' or 'worst' matched, or its index (a whole number, as text or a number)."""
    scores = matched_scores(group, absolute)
    if which == "best":
        return int(np.argmax(scores))
    if which == "worst":
        return int(np.argmin(scores))
    text = which.strip() if isinstance(which, str) else None
    if text is not None and text.isascii() and text.isdigit():
        unit = int(text)
    elif isinstance(which, int) and not isinstance(which, bool):
        unit = which
    elif isinstance(which, float) and which.is_integer():
        unit = int(which)
    else:
        raise MergeError(f"unit: 'best', 'worst' or a whole unit index, not {quoted(which)}")
    if not 0 <= unit < len(scores):
        raise MergeError(f"{group.name} has units 0–{len(scores) - 1}, not {unit}")
    return unit


def _unit_activations(encoder, tap: Tap, clip: np.ndarray, sample_rate: int, units: list[int]):
    """(1, frames, len(units)) activations of `units` at `tap` for one clip; 'res' joins its layers in time."""
    acts = activations(encoder, encoder_input(encoder, [clip], sample_rate), [tap])[tap]
    return acts.reshape(1, -1, acts.shape[-1])[..., units].float()


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() < 1e-8 or b.std() < 1e-8:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def unit_traces(speech, music, alignment: Alignment, name: str, unit: int, clip: np.ndarray,
                sample_rate: int) -> UnitTraces:
    """Activations over `clip` of speech unit `unit` of group `name`, its matched music unit and music unit `unit`.

    `speech`/`music` are the encoders the alignment was computed on (the music one unpermuted); a
    query/key group is shown by its query projections."""
    group, absolute = alignment.group(name), alignment.absolute
    perm = group.perm.numpy()
    if not 0 <= unit < len(perm):
        raise MergeError(f"{group.name} has units 0–{len(perm) - 1}, not {unit}")
    matched = int(perm[unit])
    tap = activation_taps([group.group])[0]
    speech_trace = _unit_activations(speech, tap, clip, sample_rate, [unit])
    music_traces = _unit_activations(music, tap, clip, sample_rate, [matched, unit])
    music_traces = match_frames(music_traces.to(speech_trace.device), speech_trace.shape[1])
    speech_trace, music_traces = speech_trace[0, :, 0].cpu().numpy(), music_traces[0].cpu().numpy()
    similarity, scores = group.similarity.numpy(), matched_scores(group, absolute)
    frames = len(speech_trace)
    passes = speech.model.config.num_hidden_layers + 1 if tap.kind == "res" else 1
    seconds = (np.arange(frames) + 0.5) * (len(clip) / sample_rate) / (frames / passes)
    return UnitTraces(
        group.name, unit, matched, int((scores > scores[unit]).sum()), len(perm), seconds,
        speech_trace, music_traces[:, 0], music_traces[:, 1],
        (float(similarity[unit, matched]), float(similarity[unit, unit])),
        (_correlation(speech_trace, music_traces[:, 0]), _correlation(speech_trace, music_traces[:, 1])),
    )

"""Teaching figures: units that fire together, encoders' confidence against the music level, and what
each encoder hears over time. Plain data in, plotly figures out."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from .figures import MERGED, MUSIC, SPEECH

ENCODER_COLOURS = {"speech": SPEECH, "merged": MERGED, "music": MUSIC}
TASK_DASHES = {"keyword": "solid", "instrument_family": "dash"}
MAX_POINTS = 2000  # per trace: long "res" traces are thinned


def _standardised(trace: np.ndarray) -> np.ndarray:
    return (trace - trace.mean()) / (trace.std() + 1e-8)


def _r(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:+.2f}"


def unit_traces_figure(traces) -> go.Figure:
    """A speech unit's activation over a clip with its matched music unit's and the same-index music unit's
    (a `merging.units.UnitTraces`), each standardised so that shapes compare; correlations in the legend."""
    step = max(1, len(traces.seconds) // MAX_POINTS)
    x = traces.seconds[::step]
    lines = [
        (f"speech unit {traces.speech_unit}", traces.speech, SPEECH, "solid"),
        (f"matched music unit {traces.matched_unit}: r = {_r(traces.clip[0])} here, "
         f"{_r(traces.calibration[0])} on calibration", traces.matched, MUSIC, "solid"),
        (f"music unit {traces.speech_unit} (same index, before permuting): r = {_r(traces.clip[1])} here, "
         f"{_r(traces.calibration[1])} on calibration", traces.same_index, "#999999", "dot"),
    ]
    fig = go.Figure([go.Scatter(x=x, y=_standardised(y)[::step], name=name, mode="lines",
                                line=dict(color=colour, dash=dash, width=2 if dash == "solid" else 1.5))
                     for name, y, colour, dash in lines])
    fig.update_layout(
        title=f"{traces.group}: speech unit {traces.speech_unit}, match rank {traces.rank + 1} of {traces.units}",
        xaxis_title="time (s)" + (", each layer in turn" if traces.group == "res" else ""),
        yaxis_title="activation (standardised)", height=380, legend=dict(orientation="h", y=-0.25),
        margin=dict(l=50, r=20, t=50, b=40))
    return fig


def mix_sweep_figure(levels: Sequence[float], curves: Mapping[str, Mapping[str, Sequence[float]]],
                     truths: Mapping[str, str], current: float | None = None) -> go.Figure:
    """Each encoder's probability of the true keyword (solid) and the true instrument (dashed) against the
    music level; `curves` is encoder -> task -> probabilities, `truths` task -> true label."""
    fig = go.Figure()
    for encoder, by_task in curves.items():
        for task, values in by_task.items():
            fig.add_trace(go.Scatter(x=list(levels), y=list(values), mode="lines+markers", name=f"{encoder}: {truths[task]}",
                                     line=dict(color=ENCODER_COLOURS.get(encoder, MERGED), dash=TASK_DASHES.get(task, "dot")),
                                     hovertemplate=f"{encoder}, music %{{x:+g}} dB<br>P({truths[task]}) = %{{y:.0%}}<extra></extra>"))
    if current is not None:
        fig.add_vline(x=current, line=dict(color="#555555", width=1, dash="dot"))
    fig.update_layout(title="confidence in the true keyword (solid) and instrument (dashed)",
                      xaxis_title="music level relative to speech (dB)", yaxis=dict(title="probe probability", range=[0, 1]),
                      height=380, margin=dict(l=50, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


def _segments(labels: Sequence[tuple[str, float]], starts: Sequence[float], hop_ends: Sequence[float]):
    """Runs of windows with the same top label: (label, start, end, mean probability)."""
    runs = []
    for (label, p), start, end in zip(labels, starts, hop_ends):
        if runs and runs[-1][0] == label:
            runs[-1][2], runs[-1][3] = end, runs[-1][3] + [p]
        else:
            runs.append([label, start, end, [p]])
    return [(label, start, end, float(np.mean(ps))) for label, start, end, ps in runs]


def timeline_strip(starts: Sequence[float], window: float, duration: float,
                   tops: Mapping[str, Mapping[str, Sequence[tuple[str, float]]]]) -> go.Figure:
    """Each encoder's top label per task over time: one lane per (task, encoder), one coloured segment per run
    of windows with the same label. `tops` is encoder -> task -> (label, probability) per window starting at
    `starts` (seconds); a window is credited from its centre's half-hop left to its half-hop right."""
    starts = np.asarray(starts, dtype=float)
    centres = starts + window / 2
    bounds = np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [duration]])
    tasks = list(next(iter(tops.values())))
    palette = qualitative.Pastel + qualitative.Set3  # light colours under black text, 23 before repeating
    fig = go.Figure()
    lanes = []
    for task in tasks:
        colours: dict[str, str] = {}
        for encoder, by_task in tops.items():
            lane = f"{task} · {encoder}"
            lanes.append(lane)
            segments = _segments(by_task[task], bounds[:-1], bounds[1:])
            for label, *_ in segments:
                colours.setdefault(label, palette[len(colours) % len(palette)])
            fig.add_trace(go.Bar(
                y=[lane] * len(segments), x=[end - start for _, start, end, _ in segments],
                base=[start for _, start, _, _ in segments], orientation="h", showlegend=False,
                marker=dict(color=[colours[label] for label, *_ in segments], line=dict(color="white", width=1)),
                text=[label for label, *_ in segments], textposition="inside", insidetextanchor="middle",
                textfont=dict(color="black"), textangle=0,
                customdata=[[start, end, p] for _, start, end, p in segments],
                hovertemplate=f"{lane}<br>%{{text}} (%{{customdata[2]:.0%}})<br>%{{customdata[0]:.2f}}–%{{customdata[1]:.2f}} s"
                              "<extra></extra>"))
    fig.update_layout(barmode="overlay", title="what each encoder hears over time (1 s windows)",
                      xaxis=dict(title="time (s)", range=[0, duration]),
                      yaxis=dict(categoryorder="array", categoryarray=lanes, autorange="reversed"),
                      height=120 + 24 * len(lanes), margin=dict(l=170, r=20, t=50, b=40),
                      uniformtext=dict(minsize=8, mode="hide"))
    return fig

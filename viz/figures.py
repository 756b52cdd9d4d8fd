"""Plotly figures for merge lab: alignment heatmaps, correlation per layer, permutations, probe scores.

Every function takes plain data (an `Alignment`'s groups, score dicts) and returns a figure; no model code.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

SPEECH, MUSIC, MERGED = "#1f77b4", "#d62728", "#2ca02c"


def _downsample(matrix: np.ndarray, max_side: int) -> np.ndarray:
    """Block-average a large matrix so the browser draws at most max_side x max_side cells."""
    step = int(np.ceil(max(matrix.shape) / max_side))
    if step <= 1:
        return matrix
    rows, cols = (matrix.shape[0] // step) * step, (matrix.shape[1] // step) * step
    return matrix[:rows, :cols].reshape(rows // step, step, cols // step, step).mean(axis=(1, 3))


def matched_order(similarity, perm, absolute: bool = False) -> np.ndarray:
    """Speech units sorted by their matched correlation (to music unit perm[i]), strongest first."""
    matrix = np.asarray(similarity, dtype=np.float32)
    perm = np.asarray(perm)
    score = matrix[np.arange(len(perm)), perm]
    return np.argsort(-(np.abs(score) if absolute else score), kind="stable")


def correlation_heatmaps(similarity, perm, *, title: str = "", absolute: bool = False, zoom: int | None = 48,
                         max_side: int = 256) -> go.Figure:
    """Cross-correlation of speech units (rows) with music units (columns), before and after permuting the
    music units, on one colour scale. Rows are the speech units sorted by matched correlation, strongest
    first; "after" puts each one's matched music unit in its column, so the diagonal lights up from the
    top left; "before" puts the music unit with the same index there (the pairing a plain average uses).
    `zoom` shows the first N rows and columns (None: all, block-averaged beyond `max_side` cells a side)."""
    matrix = np.asarray(similarity, dtype=np.float32)
    perm = np.asarray(perm)
    order = matched_order(matrix, perm, absolute)
    n = len(order) if zoom is None else max(1, min(int(zoom), len(order)))
    rows = order[:n]
    panels = {"before: music unit with the same index": rows, "after: matched music unit": perm[rows]}
    shown = [matrix[np.ix_(rows, columns)] for columns in panels.values()]
    if absolute:
        shown = [np.abs(values) for values in shown]
    # one colour scale for both panels, spanning the values shown (so a diagonal of 0.7 stands out against 0.4)
    top = max(float(np.abs(values).max()) for values in shown) or 1.0
    zmin, zmax = (0.0, top) if absolute else (-top, top)
    fig = make_subplots(rows=1, cols=2, subplot_titles=list(panels), horizontal_spacing=0.08)
    for col, (values, columns) in enumerate(zip(shown, panels.values()), start=1):
        fig.add_trace(_heatmap(values, rows, columns, max_side, zmin, zmax, absolute, showscale=col == 2), row=1, col=col)
        categorical = dict(type="category", showticklabels=n <= 64, tickfont=dict(size=8)) if n <= max_side else {}
        fig.update_yaxes(autorange="reversed", title_text="speech unit, best matched first" if col == 1 else None,
                         row=1, col=col, **categorical)
        fig.update_xaxes(title_text="music unit in that row's place", row=1, col=col, **categorical)
    shown_units = f"first {n} of {len(order)}" if n < len(order) else f"all {n}"
    fig.update_layout(title=f"{title} · {shown_units} units" if title else shown_units, height=500,
                      margin=dict(l=50, r=20, t=70, b=45))
    return fig


def _heatmap(shown, rows, columns, max_side, zmin, zmax, absolute, showscale) -> go.Heatmap:
    """Cell by cell, unit ids on the (categorical) axes and on hover, or block-averaged by rank when too large."""
    common = dict(zmin=zmin, zmax=zmax, colorscale="Viridis" if absolute else "RdBu_r", showscale=showscale,
                  colorbar=dict(title="|corr|" if absolute else "corr"))
    value = "|correlation|" if absolute else "correlation"
    if len(rows) <= max_side:
        return go.Heatmap(z=shown, x=[str(c) for c in columns], y=[str(r) for r in rows], **common,
                          hovertemplate=f"speech unit %{{y}} · music unit %{{x}}<br>{value} %{{z:.2f}}<extra></extra>")
    step = int(np.ceil(len(rows) / max_side))
    blocks = _downsample(shown, max_side)
    ranks = np.arange(blocks.shape[0]) * step
    return go.Heatmap(z=blocks, x=ranks, y=ranks, **common,
                      hovertemplate=f"ranks %{{y}}+ × %{{x}}+ ({step}×{step} cells)<br>mean {value} %{{z:.2f}}<extra></extra>")


def diagonal_by_layer(groups: Mapping[str, object]) -> go.Figure:
    """Mean matched correlation per group, before and after alignment, in network order."""
    names = list(groups)
    before = [groups[n].before for n in names]
    after = [groups[n].after for n in names]
    fig = go.Figure([
        go.Bar(name="before", x=names, y=before, marker_color="#aaaaaa"),
        go.Bar(name="after", x=names, y=after, marker_color=MERGED),
    ])
    fig.update_layout(barmode="group", title="mean diagonal correlation per group", yaxis_title="mean matched correlation",
                      height=360, margin=dict(l=40, r=20, t=50, b=80))
    return fig


def permutation_lines(perm, *, title: str = "permutation", max_lines: int = 256) -> go.Figure:
    """Index lines: music unit j (bottom) moves to position i (top); crossings show the re-ordering."""
    perm = np.asarray(perm)
    n = len(perm)
    picked = np.linspace(0, n - 1, min(n, max_lines)).astype(int)
    xs, ys = [], []
    for i in picked:
        xs += [int(perm[i]), int(i), None]
        ys += [0, 1, None]
    moved = float(np.mean(perm != np.arange(n)))
    fig = go.Figure(go.Scattergl(x=xs, y=ys, mode="lines", line=dict(width=1, color=MUSIC), hoverinfo="skip"))
    fig.update_layout(title=f"{title}: {moved:.0%} of {n} units move", height=260, showlegend=False,
                      yaxis=dict(tickvals=[0, 1], ticktext=["music order", "speech order"]), xaxis_title="unit index",
                      margin=dict(l=90, r=20, t=50, b=40))
    return fig


def probe_bars(scores: Mapping[str, Mapping[str, float]], domains: Mapping[str, str],
               colours: Mapping[str, str] | None = None, *,
               intervals: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
               test_clips: Mapping[str, Mapping[str, int]] | None = None, title: str = "probe accuracy by task") -> go.Figure:
    """Probe accuracy per task for several encoders (e.g. speech, music, merged); `colours` by encoder name
    (default: speech blue, music red, anything else green). `intervals` ({encoder: {task: (low, high)}}) draws
    95 % error bars; `test_clips` ({encoder: {task: n}}) writes each bar's test-clip count under its value."""
    colours = colours or {"speech": SPEECH, "music": MUSIC}
    tasks = list(domains)
    fig = go.Figure()
    for name, row in scores.items():
        bounds = (intervals or {}).get(name, {})
        counts = (test_clips or {}).get(name, {})
        error = None
        if bounds:
            error = dict(type="data", symmetric=False, color="#333333", thickness=1.2, width=3,
                         array=[bounds[t][1] - row[t] if t in bounds else 0 for t in tasks],
                         arrayminus=[row[t] - bounds[t][0] if t in bounds else 0 for t in tasks])
        text = [f"{row.get(t, 0):.0f}" + (f"<br>n={counts[t]}" if t in counts else "") for t in tasks]
        fig.add_trace(go.Bar(name=name, x=[f"{t}<br>({domains[t]})" for t in tasks], y=[row.get(t) for t in tasks],
                             marker_color=colours.get(name, MERGED), error_y=error, text=text, textposition="inside",
                             insidetextanchor="start"))
    fig.update_layout(barmode="group", yaxis=dict(title="accuracy (%)", range=[0, 105]), title=title,
                      height=380, margin=dict(l=40, r=20, t=50, b=60))
    return fig


def tradeoff_curve(curves: Mapping[str, Sequence[Mapping[str, float]]], current: Mapping[str, float] | None = None,
                   *, previous: Mapping[str, float] | None = None,
                   title: str = "speech vs music trade-off over α") -> go.Figure:
    """Speech average vs music average over alpha, one line per method (the paper's picture: linear and
    permute together); `current` stars this merge and `previous` marks the one before it, each with error bars when
    it has `speech_interval` and `music_interval` ((low, high) each). A point's text is its `label` when it has one,
    else its alpha."""
    fig = go.Figure()
    for method, points in curves.items():
        fig.add_trace(go.Scatter(
            x=[p["music_avg"] for p in points], y=[p["speech_avg"] for p in points], mode="lines+markers+text",
            name=method, text=[p.get("label") or f"α={p['alpha']:g}" for p in points], textposition="top center",
        ))
    for point, name, symbol, colour in ((previous, "your previous merge", "diamond-open", "grey"),
                                        (current, "this merge", "star", "black")):
        if point:
            fig.add_trace(_marked(point, point.get("name", name), symbol, colour))
    fig.update_layout(title=title, xaxis_title="music probe average (%)",
                      yaxis_title="speech probe average (%)", height=420, margin=dict(l=50, r=20, t=50, b=50))
    return fig


def _marked(point: Mapping, name: str, symbol: str, colour: str) -> go.Scatter:
    """One merge on the trade-off plane, with its intervals as error bars."""
    x, y = point["music_avg"], point["speech_avg"]
    bars = {}
    for axis, key, value in (("error_x", "music_interval", x), ("error_y", "speech_interval", y)):
        if point.get(key):
            low, high = point[key]
            bars[axis] = dict(type="data", symmetric=False, array=[high - value], arrayminus=[value - low],
                              color=colour, thickness=1.2)
    return go.Scatter(x=[x], y=[y], mode="markers", name=name, marker=dict(symbol=symbol, size=16, color=colour), **bars)

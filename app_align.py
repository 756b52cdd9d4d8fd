"""Section 2, the alignment: run it, then look layer by layer at the cross-correlation heatmaps, the mean matched
correlation per layer and the permutation itself."""
from __future__ import annotations

import gradio as gr

import app_teach
import app_text
from app_handlers import flag, handler, toasts
from merging.align import PAPER_COMPONENTS
from merging.service.alignment_summary import showcase_group
from merging.spec import COMPONENTS
from viz.figures import correlation_heatmaps, diagonal_by_layer, permutation_lines

EXPLANATION = """**What is happening.** Two networks trained apart learn similar features, but in a different
order: what unit 7 of the music encoder does, unit 42 of the speech encoder may do. Averaging their
weights unit by unit then mixes unrelated features.

The alignment plays the calibration clips (speech and music) through both encoders, measures how
strongly each speech unit's activity goes with each music unit's (their correlation), and finds the
one-to-one re-ordering of the music units that puts the best partners on the diagonal.
Re-ordering hidden units does not change what the music encoder computes; it only lines the two up,
so that a merge averages like with like.

- **Heatmaps**: speech units down, best matched first. Right: each one's matched music unit across, so
  matched pairs light up the diagonal from the top left. Left: the music unit with the same index (what
  plain averaging pairs it with): no diagonal. Hover for unit ids; zoom to see cells.
- **Bars**: mean matched correlation per layer, before and after.
- **Lines**: where each music unit moved."""


class AlignmentPanel:
    def __init__(self) -> None:
        gr.Markdown("## 2 · Alignment")
        with gr.Row():
            with gr.Column(scale=2):
                gr.Markdown(EXPLANATION)
                self.components = gr.CheckboxGroup(list(COMPONENTS), value=list(PAPER_COMPONENTS),
                                                   label="permute (cnn: feature extractor, res: residual stream, ffn, "
                                                         "attn: heads)")
                self.signed = gr.Checkbox(False, label="match on signed correlation (the paper matches on its absolute value)")
                self.button = gr.Button("Run alignment", variant="primary", elem_id="align-button")
                self.status = gr.Markdown(elem_id="align-status")
            with gr.Column(scale=3):
                with gr.Row():
                    self.group = gr.Dropdown(choices=[], label="layer and component", interactive=True,
                                             elem_id="group-chooser", scale=2)
                    self.zoom = gr.Radio(app_teach.ZOOMS, value=app_teach.DEFAULT_ZOOM, label="units shown (first N, or all)",
                                         elem_id="zoom", scale=1)
                self.heatmap = gr.Plot(label="cross-correlation, before and after permutation", elem_id="heatmap")
                with gr.Row():
                    self.diagonal = gr.Plot(label="mean diagonal correlation per layer", elem_id="diagonal")
                    self.permutation = gr.Plot(label="the permutation", elem_id="permutation")

    def wire(self, service, session: gr.State, encoders, then: tuple) -> None:
        """`then`: (handler, inputs, outputs) run after each alignment (the units that fire together)."""
        lab, scoring = service.lab, service.scoring

        def figures(session, name, zoom):
            alignment = lab.alignment_view(session)
            group = alignment.group(name)
            title = f"{name}: matched correlation {group.before:.2f} → {group.after:.2f}"
            return (correlation_heatmaps(group.similarity.numpy(), group.perm.numpy(), title=title,
                                         absolute=alignment.absolute, zoom=app_teach.zoom_value(zoom)),
                    permutation_lines(group.perm.numpy(), title=name))

        @handler
        def run_align(session, speech, music, components, signed, zoom=app_teach.DEFAULT_ZOOM, progress=gr.Progress()):
            progress(0, desc="loading calibration clips")
            session = lab.align(session, speech, music, components=components or (), absolute=not flag(signed, "signed"),
                                progress=lambda fraction, message: progress(fraction, desc=message))
            if lab.device == "cpu":  # the pair's first release needs both inputs' full-suite scores: start them now
                scoring.prefetch(speech, music)  # (not on ZeroGPU, where a background thread cannot use the GPU)
            alignment = lab.alignment_view(session)
            clips, source = lab.calibration()
            status = app_text.align_status(alignment, speech, music, f"{len(clips)} {source}")
            shown = showcase_group(alignment)
            heatmap, lines = figures(session, shown, zoom)
            return (session, status, gr.update(choices=list(alignment.groups), value=shown), heatmap,
                    diagonal_by_layer(alignment.groups), lines)

        @toasts
        def show_group(session, name, zoom=app_teach.DEFAULT_ZOOM):
            return figures(session, name, zoom)

        self.button.click(run_align, [session, encoders.speech, encoders.music, self.components, self.signed, self.zoom],
                          [session, self.status, self.group, self.heatmap, self.diagonal, self.permutation],
                          api_name="align", concurrency_id="lab").then(*then, api_visibility="private", concurrency_id="lab")
        self.group.input(show_group, [session, self.group, self.zoom], [self.heatmap, self.permutation], api_name="show_group")
        self.zoom.input(show_group, [session, self.group, self.zoom], [self.heatmap, self.permutation],
                        api_visibility="private")

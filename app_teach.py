"""The app's teaching panels: units that fire together (under the alignment) and the speech-over-music mixer.
UI wiring only (merging.service.teaching does the work, viz.teach draws); built inside app.build_app."""
from __future__ import annotations

import gradio as gr
import numpy as np

import app_text
from app_encoders import sources
from app_handlers import handler
from merging.mixing import LEVEL_RANGE_DB
from merging.service.controls import DEFAULT_METHOD
from viz.teach import mix_sweep_figure, unit_traces_figure

ZOOMS = ["24", "48", "96", "all"]  # heatmap sizes: first N units, or every unit
DEFAULT_ZOOM = "48"
UNIT_NOTE = """**Units that fire together.** A speech unit's activation over one calibration clip, beside its
matched music unit and beside the music unit that had its index before re-ordering (the one a plain
average would mix it with). Curves are standardised: compare their shapes."""
MIX_NOTE = """**Speech over music.** Put a keyword under an instrument and set how loud the music is. The
probes of the speech, merged and music encoders read the mix; the sweep shows where each stops hearing
the word and starts hearing the instrument."""
DEFAULT_MUSIC = "bass"


def zoom_value(zoom: str | None) -> int | None:
    """A zoom choice as a unit count (None: all)."""
    if zoom in (None, "", "all"):
        return None
    if str(zoom) not in ZOOMS:
        raise gr.Error(f"zoom: one of {', '.join(ZOOMS)}", print_exception=False)
    return int(zoom)


def unit_panel(teaching, session: gr.State, group: gr.Dropdown) -> tuple:
    """Controls and plot for one speech unit's traces; returns (handler, inputs, outputs) for chaining after an alignment."""

    @handler
    def show_units(session, group, unit, clip_index):
        traces = teaching.unit_traces(session, group, unit or "best", clip_index)
        note = (f"speech unit {traces.speech_unit} ↔ matched music unit {traces.matched_unit}: "
                f"r = {traces.calibration[0]:+.2f} on the calibration clips; music unit {traces.speech_unit} "
                f"(same index): r = {traces.calibration[1]:+.2f}")
        return unit_traces_figure(traces), note

    gr.Markdown(UNIT_NOTE)
    with gr.Row():
        unit = gr.Dropdown(["best", "worst"], value="best", allow_custom_value=True, elem_id="unit-chooser",
                           label="speech unit: best or worst matched, or type its index")
        clip_index = gr.Slider(0, max(teaching.calibration_clip_count() - 1, 1), value=0, step=1, elem_id="unit-clip",
                               label="calibration clip")
    traces = gr.Plot(label="activations over the clip", elem_id="unit-traces")
    note = gr.Markdown(elem_id="unit-note")
    inputs, outputs = [session, group, unit, clip_index], [traces, note]
    unit.input(show_units, inputs, outputs, api_name="unit_traces", trigger_mode="always_last", concurrency_id="lab")
    for trigger in (clip_index.release, group.input):
        trigger(show_units, inputs, outputs, api_visibility="private", trigger_mode="always_last", concurrency_id="lab")
    return show_units, inputs, outputs


def mixer_panel(teaching, session: gr.State, method: gr.Radio, encoders) -> None:
    """Section: a keyword under an instrument at a chosen level, read by the three encoders' probes."""
    speech_choices = [clip.label for clip in teaching.mix_choices("speech")]
    music_choices = [clip.label for clip in teaching.mix_choices("music")]
    music_default = next((label for label in music_choices if label.startswith(DEFAULT_MUSIC)), music_choices[0])

    @handler
    def run_mix(session, keyword, instrument, level, speech_upload=None, music_upload=None, method=DEFAULT_METHOD,
                **chosen):
        mixed, report = teaching.mix(session, sources(chosen), keyword, instrument, level, speech_upload=speech_upload,
                                     music_upload=music_upload, method=method)
        pcm = np.round(mixed * 32767).astype(np.int16)  # as heard by the probes: gradio rescales float audio to full scale
        return (teaching.sample_rate, pcm), app_text.clip_table(report), app_text.clip_status(report)

    @handler
    def run_mix_sweep(session, keyword, instrument, level, speech_upload=None, music_upload=None, method=DEFAULT_METHOD,
                      progress=gr.Progress(), **chosen):
        progress(0, desc="mixing at every level")
        sweep = teaching.mix_sweep(session, sources(chosen), keyword, instrument, speech_upload=speech_upload,
                                   music_upload=music_upload, method=method)
        curves = app_text.by_display_role({role: c for role, c in sweep.curves.items() if c is not None})
        labels = " · ".join(f"{task}: {label}" for task, label in sweep.truths.items())
        return mix_sweep_figure(sweep.levels, curves, sweep.truths, current=level), f"followed: {labels} ({sweep.truth_note})"

    gr.Markdown(MIX_NOTE)
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                speech = gr.Dropdown(speech_choices, value=speech_choices[0], label="spoken keyword", elem_id="mix-speech")
                music = gr.Dropdown(music_choices, value=music_default, label="instrument", elem_id="mix-music")
            with gr.Accordion("or your own clips", open=False):
                with gr.Row():
                    speech_upload = gr.Audio(sources=["upload", "microphone"], type="filepath", label="speech (optional)",
                                             elem_id="mix-speech-upload")
                    music_upload = gr.Audio(sources=["upload"], type="filepath", label="music (optional)",
                                            elem_id="mix-music-upload")
            level = gr.Slider(*LEVEL_RANGE_DB, value=0, step=1, label="music level relative to the speech (dB)",
                              elem_id="mix-level")
            with gr.Row():
                mix_button = gr.Button("Mix and probe", variant="primary", elem_id="mix-button")
                sweep_button = gr.Button("Sweep the level", elem_id="mix-sweep-button")
            mixed = gr.Audio(label="the mix", type="numpy", interactive=False, elem_id="mix-audio")
        with gr.Column(scale=3):
            table = gr.Dataframe(label="top prediction per task", interactive=False, elem_id="mix-predictions",
                                 headers=app_text.CLIP_HEADERS, wrap=True)
            status = gr.Markdown(elem_id="mix-status")
            sweep_plot = gr.Plot(label="confidence against the music level", elem_id="mix-sweep")
            sweep_note = gr.Markdown(elem_id="mix-sweep-note")
    inputs, roles = [session, speech, music, level, speech_upload, music_upload, method], encoders.kwargs()
    mix_button.click(run_mix, inputs, [mixed, table, status], inputs_kwargs=roles, api_name="mix", concurrency_id="lab")
    for trigger in (level.release, speech.input, music.input):
        trigger(run_mix, inputs, [mixed, table, status], inputs_kwargs=roles, api_visibility="private",
                trigger_mode="always_last", concurrency_id="lab")
    sweep_button.click(run_mix_sweep, inputs, [sweep_plot, sweep_note], inputs_kwargs=roles, api_name="mix_sweep",
                       concurrency_id="lab")

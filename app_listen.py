"""Section 4, listen and probe: a clip (upload, recording or example) read by the probes of the merged encoder and
its two inputs, and for a clip over 2 s what each hears over time."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

import app_text
from app_encoders import sources
from app_handlers import handler
from viz.teach import timeline_strip

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "audio" / "examples"
EXAMPLES = [  # (file, label): speech, music, speech over music
    ("speech_yes_en-us-m1.ogg", "speech: “yes”"),
    ("speech_seven_en-gb-scotland-f3.ogg", "speech: “seven”"),
    ("music_piano_phrase_C.ogg", "music: piano phrase in C"),
    ("music_strings_chord_A_minor.ogg", "music: A minor chord, strings"),
    ("music_guitar_note_E.ogg", "music: guitar note E"),
    ("speech_over_music_yes_synth_lead.ogg", "speech over music: “yes” + synth"),
    ("speech_over_music_on_guitar.ogg", "speech over music: “on” + guitar"),
]
PROBE_NOTE = """Each encoder's features feed small linear probes (one per task) trained on labelled clips;
the table shows each probe's top guess and its confidence for your clip."""


class ListenPanel:
    def __init__(self, max_clip_seconds: float) -> None:
        gr.Markdown("## 4 · Listen and probe")
        with gr.Row():
            with gr.Column(scale=2):
                self.clip = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="clip",
                                     label=f"clip (at most {max_clip_seconds:g} s: longer clips are trimmed, with a warning)")
                gr.Examples([[str(EXAMPLES_DIR / name)] for name, _ in EXAMPLES], inputs=[self.clip],
                            example_labels=[label for _, label in EXAMPLES], label="examples")
                self.button = gr.Button("Probe this clip", elem_id="probe-button")
            with gr.Column(scale=3):
                gr.Markdown(PROBE_NOTE)
                self.predictions = gr.Dataframe(label="top prediction per task", interactive=False, elem_id="predictions",
                                                headers=app_text.CLIP_HEADERS, wrap=True)
                self.status = gr.Markdown(elem_id="clip-status")
        self.timeline = gr.Plot(label="what each encoder hears over time", elem_id="timeline", visible=False)

    def wire(self, service, session: gr.State, encoders, method: gr.Radio) -> None:
        teaching = service.teaching

        @handler
        def run_probe(session, clip, method, **chosen):
            report = teaching.probe_clip(session, sources(chosen), clip, method)
            for warning in report.warnings:
                gr.Warning(warning)
            return app_text.clip_table(report), app_text.clip_status(report)

        def probe_on_change(session, clip, method, **chosen):
            if not clip:  # cleared
                return gr.skip(), gr.skip()
            return run_probe(session, clip, method, **chosen)

        @handler
        def show_timeline(session, clip, method, **chosen):
            if not clip:
                return gr.update(visible=False)
            timeline = teaching.timeline(session, sources(chosen), clip, method)
            if timeline is None:
                return gr.update(value=None, visible=False)
            return gr.update(value=timeline_strip(timeline.starts, timeline.window, timeline.seconds,
                                                  app_text.by_display_role(timeline.tops)), visible=True)

        inputs, roles = [session, self.clip, method], encoders.kwargs()
        table = [self.predictions, self.status]
        self.button.click(run_probe, inputs, table, inputs_kwargs=roles, api_name="probe_clip", concurrency_id="lab")
        self.clip.change(probe_on_change, inputs, table, inputs_kwargs=roles, api_visibility="private",
                         trigger_mode="always_last", concurrency_id="lab").then(
            show_timeline, inputs, [self.timeline], inputs_kwargs=roles, api_visibility="private", concurrency_id="lab")
        self.button.click(show_timeline, inputs, [self.timeline], inputs_kwargs=roles, api_name="clip_timeline",
                          concurrency_id="lab")

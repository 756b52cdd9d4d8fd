"""Section 1, the encoders: one dropdown per lab role, gathered here so that every handler takes them as one group
(`Encoders.kwargs()` in an event, `sources(chosen)` in its handler), and the table of the chosen encoders."""
from __future__ import annotations

from collections.abc import Mapping

import gradio as gr

import app_text
from app_handlers import toasts
from merging.catalogue import LAB_ROLES
from merging.methods import METHODS
from merging.service.controls import DEFAULT_METHOD


def sources(chosen: Mapping[str, object]) -> dict[str, str | None]:
    """The chosen encoders by lab role, from a handler's keyword arguments (see `Encoders.kwargs`)."""
    return {role: chosen.get(role) for role in LAB_ROLES}


class Encoders:
    """The six role dropdowns (speech and music in view, the students and the fine-tuned copy folded)."""

    def __init__(self, lab) -> None:
        self.lab = lab
        defaults = lab.default_sources()
        choices = [(lab.encoders.label(key), key) for key in lab.encoders.keys()]
        gr.Markdown("## 1 · Encoders")
        with gr.Row():
            speech = gr.Dropdown(choices, value=defaults["speech"], label=app_text.ROLE_TITLES["speech"])
            music = gr.Dropdown(choices, value=defaults["music"], label=app_text.ROLE_TITLES["music"])
        with gr.Accordion("Students (for task-vector methods) and the fine-tuned copy (for speech_ft)", open=False):
            with gr.Row():
                self.others = [gr.Dropdown(choices, value=defaults[role], label=app_text.ROLE_TITLES[role])
                               for role in LAB_ROLES[2:]]
        self.speech, self.music = speech, music
        self.inputs = [speech, music, *self.others]  # in LAB_ROLES order
        self.table = gr.Dataframe(label="chosen encoders", interactive=False, elem_id="encoder-table",
                                  headers=app_text.ENCODER_HEADERS)
        self.problems = gr.Markdown(elem_id="encoder-problems")

    def wire(self, demo: gr.Blocks, method: gr.Radio) -> None:
        """The table follows the choices and the method (whose roles are checked); a new speech/music pair suggests
        matching students."""
        lab = self.lab

        @toasts
        def show_encoders(method=DEFAULT_METHOD, **chosen):
            rows, problems = lab.describe(sources(chosen), method if method in METHODS else DEFAULT_METHOD)
            for problem in problems:
                gr.Warning(problem)
            return ({"headers": app_text.ENCODER_HEADERS, "data": app_text.encoder_rows(rows, lab.device)},
                    "\n".join(f"- ⚠ {p}" for p in problems))

        @toasts
        def suggest_roles(speech, music):
            """Students and fine-tuned copy that match the chosen speech and music encoders, or none."""
            suggested = lab.suggested_sources(speech, music)
            return tuple(gr.update(value=suggested[role]) for role in LAB_ROLES[2:])

        shown = {"method": method, **self.kwargs()}
        outputs = [self.table, self.problems]
        demo.load(show_encoders, inputs_kwargs=shown, outputs=outputs, api_name="encoders")
        for dropdown in (self.speech, self.music):
            dropdown.input(suggest_roles, [self.speech, self.music], self.others, api_visibility="private").then(
                show_encoders, inputs_kwargs=shown, outputs=outputs, api_visibility="private")
        for dropdown in (*self.others, method):
            dropdown.input(show_encoders, inputs_kwargs=shown, outputs=outputs, api_visibility="private")

    def kwargs(self) -> dict[str, gr.Dropdown]:
        """The dropdowns by role, for an event's `inputs_kwargs` (an API client names them)."""
        return dict(zip(LAB_ROLES, self.inputs))

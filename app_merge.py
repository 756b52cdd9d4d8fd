"""Section 3, the merge: the method and every parameter of it as a control derived from the registry (a slider with
its range and step for a number, a radio for a choice, a checkbox for a flag, a text box for per-layer values), the
live scores streamed stage by stage, and the trade-off plot with a sweep of the method's grid."""
from __future__ import annotations

import math
import time

import gradio as gr

import app_live
import app_text
from app_encoders import sources
from app_handlers import flag, handler, release_of
from merging.catalogue import method_roles
from merging.methods import METHODS, Param, all_params
from merging.service.controls import DEFAULT_METHOD
from merging.tradeoff import grid
from viz.figures import tradeoff_curve

LAYER_PLACEHOLDER = {"floats": "e.g. 0.05, 0.1, 0.2, 0.4 (empty: the single value everywhere)",
                     "pairs": "speech/music per layer, e.g. 0.9/0.1, 0.5/0.5 (empty: the single pair everywhere)"}


def method_choices() -> list[str]:
    """The methods on offer: every method in the registry, in the order they were registered."""
    return list(METHODS)


def label(param: Param) -> str:
    """A control's label from the registry: 'α: weight of the music side (…)'."""
    return f"{param.label}: {param.help}"


def shown_param(name: str, method: str) -> Param:
    """The parameter's declaration a control shows: `method`'s own, else the first method's that has it."""
    declared = METHODS.get(method)
    return declared.param(name) if declared and name in declared.parameters else all_params()[name][0][1]


def bounds(name: str) -> tuple[float, float]:
    """A number control's range over every method that has it (each method checks its own range)."""
    params = [param for _, param in all_params()[name]]
    return min(p.low for p in params), max(p.high for p in params)


def control(name: str) -> gr.Component:
    """The page's control for a registry parameter, showing `DEFAULT_METHOD`'s declaration when it has one."""
    param = shown_param(name, DEFAULT_METHOD)
    common = dict(label=label(param), visible=name in METHODS[DEFAULT_METHOD].parameters, elem_id=f"param-{name}")
    if param.kind in ("float", "int"):
        low, high = bounds(name)
        if math.isinf(low) or math.isinf(high):
            return gr.Number(value=param.default, precision=0 if param.kind == "int" else None, **common)
        return gr.Slider(low, high, value=param.default, step=param.resolution, **common)
    if param.kind == "choice":
        return gr.Radio(list(param.choices), value=param.default, **common)
    if param.kind == "flag":
        return gr.Checkbox(value=param.default, **common)
    return gr.Textbox("", placeholder=LAYER_PLACEHOLDER[param.kind], **common)


def control_update(name: str, method: str, previous: str | None) -> dict:
    """How `name`'s control changes when the method becomes `method`: hidden unless it has the parameter; else its
    label, range and step, and its value reset to the default unless the previous method's parameter was the same."""
    declared = METHODS[method]
    if name not in declared.parameters:
        return gr.update(visible=False)
    param = declared.param(name)
    update = dict(visible=True, label=label(param))
    if param.kind in ("float", "int") and not (math.isinf(param.low) or math.isinf(param.high)):
        update.update(minimum=param.low + (param.resolution if param.low_open else 0),
                      maximum=param.high - (param.resolution if param.high_open else 0), step=param.resolution)
    before = METHODS.get(previous)
    if before is None or name not in before.parameters or not before.param(name).same_control(param):
        update["value"] = param.default if param.kind not in ("floats", "pairs") else ""
    return gr.update(**update)


def method_note(method: str) -> str:
    """The method's description, inputs and paper."""
    declared = METHODS[method]
    inputs = ", ".join(f"{role} ← {app_text.ROLE_TITLES[lab_role]}" for role, lab_role in method_roles(method).items())
    return f"{declared.description}  \nInputs: {inputs}." + (f"  \nPaper: {declared.paper}." if declared.paper else "")


class MergePanel:
    def __init__(self) -> None:
        gr.Markdown("## 3 · Merge")
        with gr.Row():
            with gr.Column(scale=2):
                self.method = gr.Radio(method_choices(), value=DEFAULT_METHOD, label="method", elem_id="method")
                self.shown_method = gr.State(DEFAULT_METHOD)
                self.note = gr.Markdown(method_note(DEFAULT_METHOD))
                single = [name for name, uses in all_params().items() if uses[0][1].kind not in ("floats", "pairs")]
                layered = [name for name in all_params() if name not in single]
                self.controls = {name: control(name) for name in single}
                with gr.Accordion("per-layer weights", open=False):
                    self.controls.update({name: control(name) for name in layered})
                self.allow_rates = gr.Checkbox(False, elem_id="allow-rates",
                                               label="allow different sample rates (the merged encoder keeps the first "
                                                     "input's front end and rate; recorded in merge_config.json)")
                self.button = gr.Button("Merge", variant="primary", elem_id="merge-button")
                self.status = gr.Markdown(elem_id="merge-status")
            with gr.Column(scale=3):
                self.bars = gr.Plot(label="probe accuracy of the merged encoder and its inputs", elem_id="probe-bars")
                self.curve = gr.Plot(label="speech/music trade-off, this merge starred", elem_id="tradeoff")
                self.sweep_button = gr.Button("Fill this method's trade-off curve (full suite, a few merges)", size="sm")
                with gr.Accordion("merge summary (JSON)", open=False):
                    self.summary = gr.JSON(label="merge summary")

    def wire(self, service, session: gr.State, encoders) -> None:
        lab, scoring = service.lab, service.scoring
        roles = encoders.kwargs()

        def recipe_inputs(chosen: dict) -> tuple[dict, dict]:
            values = {name: chosen.pop(name) for name in list(chosen) if name in self.controls}
            return sources(chosen), values

        @handler
        def run_merge(session, method, allow_rates=False, request: gr.Request = None, **chosen):
            owner, number = release_of(request, session)
            lease = scoring.lease(owner, number)  # before anything waits: the newest release wins
            chosen_sources, controls = recipe_inputs(chosen)
            session = lab.merge(session, chosen_sources, method, controls,
                                allow_rate_mismatch=flag(allow_rates, "allow different sample rates"))
            summary = app_text.merge_summary(session.merged)  # then the live stages: quick, refined, full suite
            yield from app_live.stream(service, session, chosen_sources, lease, app_text.merged_line(session.merged),
                                       summary)

        @handler
        def run_sweep(session, method, allow_rates=False, request: gr.Request = None, **chosen):
            owner, _ = release_of(request, session)
            lease = scoring.lease(f"{owner} sweep")
            chosen_sources, controls = recipe_inputs(chosen)
            recipe = lab.recipe(session, chosen_sources, method, controls,
                                allow_rate_mismatch=flag(allow_rates, "allow different sample rates"))
            settings = grid(method)
            if not settings:
                raise gr.Error(f"{method} does not place its merges on the speech–music axis: it has no curve")
            recipes, said = [recipe.at(**setting) for setting in settings], 0.0
            for index, (_, scores) in scoring.fill(recipes, lease):
                if scores is not None:
                    drawn, _ = app_live.curves(service, session, chosen_sources, recipe)
                    yield tradeoff_curve(drawn, title=f"{method}: {index + 1} of {len(recipes)} merges on the full suite")
                elif time.monotonic() - said >= app_live.PROGRESS_SECONDS:  # a point where the page can stop it
                    said = time.monotonic()
                    yield gr.skip()

        def on_method(method, previous):
            if method not in METHODS:
                return (gr.skip(),) * (len(self.controls) + 2)
            return (method_note(method), *(control_update(name, method, previous) for name in self.controls), method)

        inputs_kwargs = {**roles, **self.controls}
        merge_inputs = [session, self.method, self.allow_rates]
        outputs = [session, self.status, self.bars, self.curve, self.summary]
        # merges stream their stages in their own queue, a unit of work at a time in the runner's turns: a person's
        # newer release starts at once and stops their running refinement (never queued behind it)
        self._release = dict(fn=run_merge, inputs=merge_inputs, outputs=outputs, inputs_kwargs=inputs_kwargs,
                             trigger_mode="multiple", concurrency_id="merge", concurrency_limit=None)
        self.button.click(**self._release, api_name="merge")
        for name, component in self.controls.items():
            trigger = component.submit if isinstance(component, (gr.Textbox, gr.Number)) else \
                component.release if isinstance(component, gr.Slider) else component.input
            trigger(**self._release, api_visibility="private")
        self.merge_after(self.method.change(on_method, [self.method, self.shown_method],
                                            [self.note, *self.controls.values(), self.shown_method],
                                            api_visibility="private"))
        self.sweep_button.click(run_sweep, merge_inputs, self.curve, inputs_kwargs=inputs_kwargs, api_name="sweep",
                                concurrency_id="sweep", concurrency_limit=None)

    def merge_after(self, event) -> None:
        """Merge with the panel's controls as they are once `event` has run (a method chosen, a tuned point loaded)."""
        event.then(**self._release, api_visibility="private")

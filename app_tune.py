"""The tune panel ("tune for me"): a search over a method's per-layer weights for the speech/music front, drawn over the
linear and permute curves (full suite) as it is found; each front point loads into the merge panel, its per-layer
weights in the editor and its full-suite scores and intervals in the bars. `/tune` streams a search, `/tune_cancel`
stops it."""
from __future__ import annotations

import gradio as gr

import app_live
from app_encoders import sources
from app_handlers import release_of, toasts
from merging.registry import all_params
from merging.service.tuning import MAX_EVALUATIONS, MAX_SECONDS, TuneState
from merging.tune import tunable_methods
from viz.figures import tradeoff_curve

EXPLAINED = ("Searches the chosen method's weights, one per transformer layer (α for linear and permute, a λ pair for "
             "task arithmetic, one λ pair for TIES, DARE and DRM), for the best speech/music trade-offs. Candidates are "
             "scored on a validation split of the probes' training clips, never on their test clips; when the budget is "
             "spent the front is re-scored on the whole validation split and then on the full suite (the test split), "
             "where it can be compared with the curves. People's requests go first: the search takes the turns left.")
STAGES = {"search": "quick estimates on the validation subset (lower than full-suite scores: compare shapes only)",
          "validation": "the whole validation split", "full suite": "the full suite (the test split, as the curves)"}
PER_LAYER = {"layer_alphas": lambda values: ", ".join(f"{v:g}" for v in values),  # read back exactly
             "layer_lambdas": lambda pairs: ", ".join(f"{s:g}/{m:g}" for s, m in pairs)}


def status_line(state: TuneState) -> str:
    shown = {t.point.stage for t in state.front}
    stage = STAGES[shown.pop()] if len(shown) == 1 else "several stages"
    return (f"**{state.phase}** · {state.evaluations}/{state.budget.evaluations} evaluations · {state.seconds:.0f} s  \n"
            f"{state.message}" + (f"  \nfront: {len(state.front)} points, {stage}" if state.front else ""))


def point_choices(state: TuneState) -> list[tuple[str, int]]:
    return [(f"{p.label}: speech {p.speech:.1f}, music {p.music:.1f} ({p.stage})", t.number)
            for t, p in ((t, t.point) for t in state.front)]


def figure(service, session, chosen: dict, state: TuneState):
    drawn, complete = app_live.curves(service, session, chosen)
    stages = sorted({t.point.stage for t in state.front})
    if state.front:
        drawn[f"tuned {state.method} ({', '.join(stages)})"] = [t.point.as_plot() for t in state.front]
    note = "" if complete else " (full-suite curves being computed)"
    return tradeoff_curve(drawn, title=f"tuned front over the linear and permute curves (full suite){note}")


def control_values(point, names) -> list:
    """The merge panel's controls (in `names` order) set to a point's arguments: per-layer values as the editor's text,
    other per-layer controls cleared (the point has none), the rest left as they are."""
    layered = {name for name, uses in all_params().items() if uses[0][1].kind in ("floats", "pairs")}
    values = []
    for name in names:
        if name in point.arguments:
            value = point.arguments[name]
            values.append(PER_LAYER[name](value) if name in PER_LAYER else value)
        else:
            values.append("" if name in layered else gr.skip())
    return values


class TunePanel:
    def __init__(self) -> None:
        gr.Markdown("### Tune for me: the speech/music front, found by search")
        gr.Markdown(EXPLAINED)
        with gr.Row():
            with gr.Column(scale=2):
                self.method = gr.Radio(tunable_methods(), value="permute", label="method to tune", elem_id="tune-method")
                self.evaluations = gr.Slider(5, MAX_EVALUATIONS, value=60, step=5, label="budget: evaluations",
                                             elem_id="tune-evaluations")
                self.seconds = gr.Slider(30, MAX_SECONDS, value=900, step=30, label="budget: seconds",
                                         elem_id="tune-seconds")
                with gr.Row():
                    self.button = gr.Button("Tune", variant="primary", elem_id="tune-button")
                    self.cancel = gr.Button("Cancel", elem_id="tune-cancel")
                self.status = gr.Markdown(elem_id="tune-status")
                self.point = gr.Dropdown([], label="front point", elem_id="tune-point")
                self.load = gr.Button("Load this point into the merge panel", elem_id="tune-load")
            with gr.Column(scale=3):
                self.plot = gr.Plot(label="tuned front", elem_id="tune-plot")
                with gr.Accordion("front (JSON)", open=False):
                    self.front = gr.JSON(label="front")

    def wire(self, service, session: gr.State, encoders, merge) -> None:
        tuning = service.tuning

        @toasts
        def run_tune(session, method, evaluations, seconds, request: gr.Request = None, **chosen):
            owner, _ = release_of(request, session)
            chosen = sources(chosen)
            job = tuning.start(owner, session, chosen, method, evaluations, seconds)
            try:
                state = job.state
                while True:  # at least every PROGRESS_SECONDS: a point where the page can stop the search
                    choices = point_choices(state)
                    yield (status_line(state), figure(service, session, chosen, state), state.summary(),
                           gr.update(choices=choices, value=choices[0][1] if choices else None))
                    if state.finished:
                        return
                    state = job.wait(app_live.PROGRESS_SECONDS)
            finally:
                job.stop()  # the page left or cancelled (a finished search has nothing left to stop)

        @toasts
        def stop_tune(session, request: gr.Request = None):
            state = tuning.stop(release_of(request, session)[0])
            return status_line(state) if state else "no search to stop"

        @toasts
        def load_point(session, number, request: gr.Request = None):
            if number is None:
                raise gr.Error("choose a front point first")
            point = tuning.point(release_of(request, session)[0], int(number))
            return (point.method, point.method, *control_values(point, list(merge.controls)))

        outputs = [self.status, self.plot, self.front, self.point]
        tune = self.button.click(run_tune, [session, self.method, self.evaluations, self.seconds], outputs,
                                 inputs_kwargs=encoders.kwargs(), api_name="tune", concurrency_id="tune",
                                 concurrency_limit=None)
        self.cancel.click(stop_tune, session, self.status, api_name="tune_cancel", cancels=[tune])
        loaded = self.load.click(load_point, [session, self.point],
                                 [merge.method, merge.shown_method, *merge.controls.values()], api_name="tune_load")
        merge.merge_after(loaded)

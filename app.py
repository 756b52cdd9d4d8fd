"""merge lab: the Gradio app. UI wiring only: the work is done by merging.service, the words by app_text, the figures by viz.figures.

    python app.py    # serves the built-in encoders of assets/models (MERGE_LAB_MODELS), no network needed
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads stall each
# other (probes took 20x longer beside one busy process). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from merging.align import PAPER_COMPONENTS  # noqa: E402
import app_live  # noqa: E402
import app_teach  # noqa: E402
import app_text  # noqa: E402
from app_limits import MULTIPART_OVERHEAD, DownloadOnce, UploadLimit  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from merging.service.controls import quoted  # noqa: E402
from app_text import ROLE_TITLES  # noqa: E402
from merging.service.alignment_summary import showcase_group  # noqa: E402
from merging.service.config import LabConfig  # noqa: E402
from merging.service.controls import LAB_ROLES, method_roles  # noqa: E402
from merging.service.lab import Lab  # noqa: E402
from merging.service.live_scores import LiveScoring  # noqa: E402
from merging.service.session import LabSession  # noqa: E402
from merging.methods import METHODS, all_params, shared_range  # noqa: E402
from merging.spec import COMPONENTS  # noqa: E402
from merging.state import MergeError  # noqa: E402
from viz.figures import (MERGED, MUSIC, SPEECH, correlation_heatmaps, diagonal_by_layer,  # noqa: E402
                         permutation_lines, probe_bars, tradeoff_curve)

try:  # on a ZeroGPU Space the decorated calls get a GPU; elsewhere the decorator is not there
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn):
        return fn

log = logging.getLogger("merge-lab")
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
# system fonts: the default theme's web fonts would be fetched from the internet
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
BAR_COLOURS = {"speech": SPEECH, "music": MUSIC, "fine-tuned": MUSIC, "merged": MERGED}
SESSION_SECONDS = 3 * 3600  # an idle session's merged weights are dropped after this
CACHE_CLEANUP = (3600, SESSION_SECONDS)  # hourly, delete uploads and downloads older than a session lives

INTRO = """# merge lab
Merge a **speech** encoder (HuBERT) with a **music** encoder (MERT) and see *why* the merge works.
**1** pick the encoders · **2** align them (correlation permutation) · **3** merge with a slider ·
**4** listen to a clip and compare what each encoder hears · **5** put speech over music and hear who hears what ·
**6** download the merged encoder."""

ALIGN_EXPLANATION = """**What is happening.** Two networks trained apart learn similar features, but in a different
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

PROBE_NOTE = """Each encoder's features feed small linear probes (one per task) trained on labelled clips;
the table shows each probe's top guess and its confidence for your clip."""


@contextlib.contextmanager
def _reported(name: str):
    """Bad input becomes a toast with the library's message; anything unexpected a short one (logged)."""
    try:
        yield
    except gr.Error:
        raise
    except MergeError as error:
        raise gr.Error(app_text.one_line(str(error)), print_exception=False) from None
    except Exception as error:  # keep serving: report, log, and leave the page as it was
        log.exception("unexpected error in %s", name)
        raise gr.Error(app_text.one_line(f"unexpected error ({type(error).__name__}): {error}")) from None


def toasts(fn):
    """Errors of `fn` (a function or a generator of updates) as toasts (see `_reported`)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            with _reported(fn.__name__):
                yield from fn(*args, **kwargs)

        return streaming

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _reported(fn.__name__):
            return fn(*args, **kwargs)

    return wrapper


SLIDERS = ("alpha", "lambda_speech", "lambda_music")  # the page's sliders: parameters of the registry's methods


def method_choices() -> list[str]:
    """The methods on offer: every method in the registry, in the order they were registered."""
    return list(METHODS)


def control_label(name: str, method: str | None = None) -> str:
    """A control's label from the registry: 'α: weight of the music side (…)' (`method`'s, or the first's)."""
    param = METHODS[method].param(name) if method else all_params()[name][0][1]
    return f"{param.label}: {param.help}"


def method_controls(method: str) -> tuple:
    """The method's description, inputs and paper, and only the controls it has, labelled by its registry entry."""
    declared = METHODS[method]
    inputs = ", ".join(f"{role} ← {ROLE_TITLES[lab_role]}" for role, lab_role in method_roles(method).items())
    note = f"{declared.description}  \nInputs: {inputs}." + (f"  \nPaper: {declared.paper}." if declared.paper else "")
    sliders = [gr.update(visible=True, label=control_label(name, method)) if name in declared.parameters
               else gr.update(visible=False) for name in SLIDERS]
    return (note, *sliders, gr.update(visible="layer_alphas" in declared.parameters))


def build_app(lab: Lab, scoring: LiveScoring | None = None) -> gr.Blocks:
    scoring = scoring or LiveScoring(lab)
    defaults = lab.default_sources()
    choices = [(lab.registry.label(key), key) for key in lab.registry.keys()]

    def sources_of(*values) -> dict[str, str]:
        return dict(zip(LAB_ROLES, values))

    # -- handlers ---------------------------------------------------------------------------------

    def teaching(fn):  # the teaching panels' handlers: on the GPU where there is one, errors as toasts
        return gpu(toasts(fn))

    @toasts
    def show_encoders(speech, music, student_base, student_speech, student_music, speech_ft, method="permute"):
        rows, problems = lab.describe(sources_of(speech, music, student_base, student_speech, student_music, speech_ft),
                                      method if method in METHODS else "permute")
        table = {"headers": app_text.ENCODER_HEADERS, "data": app_text.encoder_rows(rows, lab.device)}
        for problem in problems:
            gr.Warning(problem)
        return table, "\n".join(f"- ⚠ {p}" for p in problems)

    @gpu
    @toasts
    def run_align(session, speech, music, components, signed, zoom=app_teach.DEFAULT_ZOOM, progress=gr.Progress()):
        progress(0, desc="loading calibration clips")
        session = lab.align(session, speech, music, components=components or (), absolute=not signed,
                            progress=lambda fraction, message: progress(fraction, desc=message))
        if lab.device == "cpu":  # the pair's first release needs both inputs' full-suite scores: start them now
            scoring.prefetch(speech, music)  # (not on ZeroGPU, where a background thread cannot use the GPU)
        alignment = lab.alignment_view(session)
        groups = list(alignment.groups)
        clips, source = lab.calibration()
        status = app_text.align_status(alignment, speech, music, f"{len(clips)} {source}")
        shown = showcase_group(alignment)
        heatmap, lines = group_figures(session, shown, zoom)
        return (session, status, gr.update(choices=groups, value=shown), heatmap,
                diagonal_by_layer(alignment.groups), lines)

    def group_figures(session, name, zoom=app_teach.DEFAULT_ZOOM):
        alignment = lab.alignment_view(session)
        if name not in alignment.groups:
            raise MergeError(f"no group '{name}' in this alignment")
        group = alignment.groups[name]
        title = f"{name}: matched correlation {group.before:.2f} → {group.after:.2f}"
        return (correlation_heatmaps(group.similarity.numpy(), group.perm.numpy(), title=title, absolute=alignment.absolute,
                                     zoom=app_teach.zoom_value(zoom)),
                permutation_lines(group.perm.numpy(), title=name))

    @toasts
    def show_group(session, name, zoom=app_teach.DEFAULT_ZOOM):
        return group_figures(session, name, zoom)

    @gpu
    @toasts
    def run_merge(session, method, alpha, lambda_speech, lambda_music, layer_alphas,
                  speech, music, student_base, student_speech, student_music, speech_ft, allow_rates=False, request: gr.Request = None):
        sources = sources_of(speech, music, student_base, student_speech, student_music, speech_ft)
        session = lab.merge(session, sources, method, alpha=alpha, lambda_speech=lambda_speech,
                            lambda_music=lambda_music, layer_alphas=layer_alphas, allow_rate_mismatch=allow_rates)
        summary = app_text.merge_summary(session.merged)  # then the live stages: quick, refined, full suite
        status = app_text.merged_line(session.merged)

        def bars_of(values, intervals, counts):
            return probe_bars(values, lab.bench.domains, colours=BAR_COLOURS, intervals=intervals, test_clips=counts)

        owner = request.session_hash if request is not None and request.session_hash else str(id(session))
        yield from app_live.stream(scoring, session, sources, owner, status, summary, bars_of, lab.with_stage)

    @gpu
    @toasts
    def run_sweep(session, method, speech, music, student_base, student_speech, student_music, speech_ft,
                  allow_rates=False, progress=gr.Progress()):
        sources = sources_of(speech, music, student_base, student_speech, student_music, speech_ft)
        session = lab.sweep(session, sources, method, allow_rate_mismatch=allow_rates,
                            progress=lambda fraction, message: progress(fraction, desc=message))
        return session, tradeoff_curve(session.curve_points(), title=f"{method} over the live probe set ({lab.bench.describe()})")

    @gpu
    @toasts
    def run_probe(session, clip, method, speech, music, student_base, student_speech, student_music, speech_ft):
        sources = sources_of(speech, music, student_base, student_speech, student_music, speech_ft)
        report = lab.probe_clip(session, sources, clip, method)
        for warning in report.warnings:
            gr.Warning(warning)
        return app_text.clip_table(report), app_text.clip_status(report)

    def probe_on_change(session, clip, method, *roles):
        if not clip:  # cleared
            return gr.skip(), gr.skip()
        return run_probe(session, clip, method, *roles)

    @toasts
    def suggest_roles(speech, music):
        """Students and fine-tuned copy that match the chosen speech and music encoders, or none."""
        suggested = lab.suggested_sources(speech, music)
        return tuple(gr.update(value=suggested[role]) for role in LAB_ROLES[2:])

    @toasts
    def run_export(session):
        return str(lab.export(session))

    # -- layout -----------------------------------------------------------------------------------

    with gr.Blocks(title="merge lab", delete_cache=CACHE_CLEANUP) as demo:
        session = gr.State(LabSession(), time_to_live=SESSION_SECONDS)  # abandoned sessions free their merged weights
        gr.Markdown(INTRO)

        gr.Markdown("## 1 · Encoders")
        with gr.Row():
            speech = gr.Dropdown(choices, value=defaults["speech"], label="speech encoder")
            music = gr.Dropdown(choices, value=defaults["music"], label="music encoder")
        with gr.Accordion("Students (for task-vector methods) and the fine-tuned copy (for speech_ft)", open=False):
            with gr.Row():
                others = [gr.Dropdown(choices, value=defaults[role], label=ROLE_TITLES[role])
                          for role in ("student_base", "student_speech", "student_music", "speech_ft")]
        roles = [speech, music, *others]
        encoder_table = gr.Dataframe(label="chosen encoders", interactive=False, elem_id="encoder-table",
                                     headers=["role", "encoder", "parameters", "sample rate", "device"])
        encoder_problems = gr.Markdown(elem_id="encoder-problems")

        gr.Markdown("## 2 · Alignment")
        with gr.Row():
            with gr.Column(scale=2):
                gr.Markdown(ALIGN_EXPLANATION)
                components = gr.CheckboxGroup(list(COMPONENTS), value=list(PAPER_COMPONENTS),
                                              label="permute (cnn: feature extractor, res: residual stream, ffn, attn: heads)")
                signed = gr.Checkbox(False, label="match on signed correlation (the paper matches on its absolute value)")
                align_button = gr.Button("Run alignment", variant="primary", elem_id="align-button")
                align_status = gr.Markdown(elem_id="align-status")
            with gr.Column(scale=3):
                with gr.Row():
                    group = gr.Dropdown(choices=[], label="layer and component", interactive=True, elem_id="group-chooser",
                                        scale=2)
                    zoom = gr.Radio(app_teach.ZOOMS, value=app_teach.DEFAULT_ZOOM, label="units shown (first N, or all)",
                                    elem_id="zoom", scale=1)
                heatmap = gr.Plot(label="cross-correlation, before and after permutation", elem_id="heatmap")
                with gr.Row():
                    diagonal = gr.Plot(label="mean diagonal correlation per layer", elem_id="diagonal")
                    permutation = gr.Plot(label="the permutation", elem_id="permutation")
        show_units, unit_inputs, unit_outputs = app_teach.unit_panel(lab, teaching, session, group)

        gr.Markdown("## 3 · Merge")
        with gr.Row():
            with gr.Column(scale=2):
                method = gr.Radio(method_choices(), value="permute", label="method", elem_id="method")
                method_note = gr.Markdown(method_controls("permute")[0])
                alpha = gr.Slider(*shared_range("alpha"), value=0.1, step=0.01, label=control_label("alpha", "permute"),
                                  elem_id="alpha")
                lambda_speech = gr.Slider(*shared_range("lambda_speech"), value=0.5, step=0.05,
                                          label=control_label("lambda_speech"), visible=False, elem_id="lambda-speech")
                lambda_music = gr.Slider(*shared_range("lambda_music"), value=0.5, step=0.05,
                                         label=control_label("lambda_music"), visible=False, elem_id="lambda-music")
                with gr.Accordion("per-layer α", open=False) as layer_alpha_editor:
                    layer_alphas = gr.Textbox("", label="one α per transformer layer (Enter to merge)",
                                              placeholder="e.g. 0.05, 0.1, 0.2, 0.4 (empty: α everywhere)")
                allow_rates = gr.Checkbox(False, elem_id="allow-rates",
                                          label="allow different sample rates (the merged encoder keeps the first "
                                                "input's front end and rate; recorded in merge_config.json)")
                merge_button = gr.Button("Merge", variant="primary", elem_id="merge-button")
                merge_status = gr.Markdown(elem_id="merge-status")
            with gr.Column(scale=3):
                bars = gr.Plot(label="probe accuracy of the merged encoder and its inputs", elem_id="probe-bars")
                curve = gr.Plot(label="speech/music trade-off, this merge starred", elem_id="tradeoff")
                sweep_button = gr.Button("Fill the trade-off curve (a few merges)", size="sm")
                with gr.Accordion("merge summary (JSON)", open=False):
                    summary = gr.JSON(label="merge summary")

        gr.Markdown("## 4 · Listen and probe")
        with gr.Row():
            with gr.Column(scale=2):
                clip = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="clip",
                                label=f"clip (at most {lab.config.max_clip_seconds:g} s: longer clips are trimmed, with a warning)")
                gr.Examples([[str(EXAMPLES_DIR / name)] for name, _ in EXAMPLES], inputs=[clip],
                            example_labels=[label for _, label in EXAMPLES], label="examples")
                probe_button = gr.Button("Probe this clip", elem_id="probe-button")
            with gr.Column(scale=3):
                gr.Markdown(PROBE_NOTE)
                predictions = gr.Dataframe(label="top prediction per task", interactive=False, elem_id="predictions",
                                           headers=["task", "speech", "merged", "music"], wrap=True)
                clip_status = gr.Markdown(elem_id="clip-status")
        show_timeline, timeline_inputs, timeline_outputs = app_teach.timeline_panel(lab, teaching, session, clip, method, roles)

        gr.Markdown("## 5 · Speech over music")
        app_teach.mixer_panel(lab, teaching, session, method, roles)

        gr.Markdown("## 6 · Export")
        with gr.Row():
            export_button = gr.Button("Build the download (transformers format + merge_config.json)", elem_id="export-button")
            export_file = gr.File(label="merged encoder (.zip): the link serves one download, then the server deletes it", elem_id="export-file", height=90)

        # -- events ---------------------------------------------------------------------------------

        demo.load(show_encoders, [*roles, method], [encoder_table, encoder_problems], api_name="encoders")
        for dropdown in (speech, music):
            dropdown.input(suggest_roles, [speech, music], others, api_visibility="private").then(
                show_encoders, [*roles, method], [encoder_table, encoder_problems], api_visibility="private")
        for dropdown in (*others, method):
            dropdown.input(show_encoders, [*roles, method], [encoder_table, encoder_problems], api_visibility="private")

        align_button.click(run_align, [session, speech, music, components, signed, zoom],
                           [session, align_status, group, heatmap, diagonal, permutation],
                           api_name="align", concurrency_id="lab").then(
            show_units, unit_inputs, unit_outputs, api_visibility="private", concurrency_id="lab")
        group.input(show_group, [session, group, zoom], [heatmap, permutation], api_name="show_group")
        zoom.input(show_group, [session, group, zoom], [heatmap, permutation], api_visibility="private")

        merge_inputs = [session, method, alpha, lambda_speech, lambda_music, layer_alphas, *roles, allow_rates]
        merge_outputs_ = [session, merge_status, bars, curve, summary]
        # merges stream their stages in their own queue, a step at a time under the lab's compute lock: a person's
        # newer release starts at once and stops their running refinement (never queued behind it)
        merge_button.click(run_merge, merge_inputs, merge_outputs_, api_name="merge", concurrency_id="merge",
                           concurrency_limit=None, trigger_mode="multiple")
        for trigger in (alpha.release, lambda_speech.release, lambda_music.release, layer_alphas.submit, method.input):
            trigger(run_merge, merge_inputs, merge_outputs_, api_visibility="private", trigger_mode="multiple",
                    concurrency_id="merge", concurrency_limit=None)
        method.change(method_controls, method, [method_note, alpha, lambda_speech, lambda_music, layer_alpha_editor],
                      api_visibility="private")
        sweep_button.click(run_sweep, [session, method, *roles, allow_rates], [session, curve], api_name="sweep",
                           concurrency_id="lab")

        probe_inputs = [session, clip, method, *roles]
        probe_button.click(run_probe, probe_inputs, [predictions, clip_status], api_name="probe_clip", concurrency_id="lab")
        clip.change(probe_on_change, probe_inputs, [predictions, clip_status], api_visibility="private",
                    trigger_mode="always_last", concurrency_id="lab").then(
            show_timeline, timeline_inputs, timeline_outputs, api_visibility="private", concurrency_id="lab")
        probe_button.click(show_timeline, timeline_inputs, timeline_outputs, api_name="clip_timeline", concurrency_id="lab")

        export_button.click(run_export, session, export_file, api_name="export", concurrency_id="lab")
    return demo


def one_line_input_errors(demo: gr.Blocks) -> None:
    """A control's value of the wrong type (an API client's) gets a one-line message naming the control, not
    an unlabelled error and a traceback in the log; Gradio's own refusals are cut to one line too."""
    for block in demo.blocks.values():
        if isinstance(block, gr.components.Component) and hasattr(block, "preprocess"):
            block.preprocess = _checked_preprocess(block, block.preprocess)


def _checked_preprocess(block, preprocess):
    @functools.wraps(preprocess)
    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error as error:
            raise gr.Error(app_text.one_line(str(error.message)), print_exception=False) from None
        except Exception:
            name = getattr(block, "label", None) or type(block).__name__
            raise gr.Error(app_text.one_line(f"{name}: {type(payload).__name__} value {quoted(payload)} is not accepted"),
                           print_exception=False) from None

    return checked


def launch(lab: Lab, scoring: LiveScoring | None = None, **kwargs) -> gr.Blocks:
    """Build and start the app (kwargs go to `Blocks.launch`)."""
    demo = build_app(lab, scoring)
    demo.queue(default_concurrency_limit=1)
    one_line_input_errors(demo)
    cache = Path(demo.GRADIO_CACHE)
    lab.keep_exports_in(cache / "merge-lab-exports")  # served from Gradio's cache as they are: no second copy
    limit = Middleware(UploadLimit, max_request_bytes=lab.config.max_upload_bytes + MULTIPART_OVERHEAD,
                       max_disk_bytes=lab.config.max_disk_bytes, folder=cache, make_room=lambda: lab.exports.prune(keep=1))
    once = Middleware(DownloadOnce, exports=lambda: lab.exports)
    demo.launch(max_file_size=lab.config.max_upload_bytes, allowed_paths=[str(EXAMPLES_DIR)], theme=THEME,
                app_kwargs={"middleware": [limit, once]}, **kwargs)
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    lab = Lab(LabConfig.from_env())
    scoring = LiveScoring(lab)
    if lab.device == "cpu":  # then the inputs' full-suite scores and the linear/permute curves, in the background
        threading.Thread(target=lambda: (lab.warm(), scoring.warm(lab.default_sources())), daemon=True,
                         name="warm-up").start()
    else:  # ZeroGPU forks a worker per call: it must not inherit a lock that a warm-up thread holds
        lab.warm()
    launch(lab, scoring, server_name=os.environ.get("GRADIO_SERVER_NAME"), server_port=_port())


def _port() -> int | None:
    port = os.environ.get("GRADIO_SERVER_PORT")
    return int(port) if port else None


if __name__ == "__main__":
    main()

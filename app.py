"""merge lab: the Gradio app. UI wiring only: the work is done by merging.service, the words by app_text, the figures by viz.figures.

    python app.py    # serves the built-in encoders of assets/models (MERGE_LAB_MODELS), no network needed
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads stall each
# other (probes took 20x longer beside one busy process). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

import app_teach  # noqa: E402
from app_align import AlignmentPanel  # noqa: E402
from app_encoders import Encoders  # noqa: E402
from app_handlers import one_line_input_errors, toasts  # noqa: E402
from app_disk import EXPORTS_FOLDER, remove_leftovers_of_earlier_runs  # noqa: E402
from app_limits import CrowdLimits, app_kwargs, close_on_sigterm  # noqa: E402
from app_listen import EXAMPLES_DIR, ListenPanel  # noqa: E402
from app_merge import MergePanel  # noqa: E402
from app_tune import TunePanel  # noqa: E402
from merging.service import LabConfig, Service  # noqa: E402
from merging.service.session import LabSession  # noqa: E402

log = logging.getLogger("merge-lab")
# system fonts: the default theme's web fonts would be fetched from the internet
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
SESSION_SECONDS = 3 * 3600  # an idle session's merged weights are dropped after this
CACHE_CLEANUP = (3600, SESSION_SECONDS)  # hourly, delete uploads and downloads older than a session lives

INTRO = """# merge lab
Merge a **speech** encoder (HuBERT) with a **music** encoder (MERT) and see *why* the merge works.
**1** pick the encoders · **2** align them (correlation permutation) · **3** merge with a slider ·
**4** listen to a clip and compare what each encoder hears · **5** put speech over music and hear who hears what ·
**6** download the merged encoder."""


def build_app(service: Service) -> gr.Blocks:
    """The page: six sections, each a panel that lays out its controls and then wires its events."""
    lab, scoring, teaching = service.lab, service.scoring, service.teaching
    with gr.Blocks(title="merge lab", delete_cache=CACHE_CLEANUP) as demo:
        session = gr.State(LabSession(), time_to_live=SESSION_SECONDS)  # abandoned sessions free their merged weights
        gr.Markdown(INTRO)
        encoders = Encoders(lab)
        alignment = AlignmentPanel()
        units = app_teach.unit_panel(teaching, session, alignment.group)
        merge = MergePanel()
        tune = TunePanel()
        listen = ListenPanel(lab.config.max_clip_seconds)
        gr.Markdown("## 5 · Speech over music")
        app_teach.mixer_panel(teaching, session, merge.method, encoders)
        gr.Markdown("## 6 · Export")
        with gr.Row():
            export_button = gr.Button("Build the download (transformers format + merge_config.json)",
                                      elem_id="export-button")
            export_file = gr.File(label="merged encoder (.zip): the link serves one download, then the server deletes it",
                                  elem_id="export-file", height=90)

        encoders.wire(demo, merge.method)
        alignment.wire(service, session, encoders, units)
        merge.wire(service, session, encoders)
        tune.wire(service, session, encoders, merge)
        listen.wire(service, session, encoders, merge.method)
        export_button.click(toasts(service.export), session, export_file, api_name="export", concurrency_id="lab")
    return demo


def launch(service: Service, **kwargs) -> gr.Blocks:
    """Build and start the app (kwargs go to `Blocks.launch`, but `limits`: a `CrowdLimits` instead of the config's)."""
    lab = service.lab
    limits = kwargs.pop("limits", None) or CrowdLimits.of(lab.config)
    demo = build_app(service)
    demo.queue(default_concurrency_limit=1)
    one_line_input_errors(demo)
    cache = Path(demo.GRADIO_CACHE)
    remove_leftovers_of_earlier_runs(cache)
    lab.keep_exports_in(cache / EXPORTS_FOLDER)  # served from Gradio's cache as they are: no second copy
    close_on_sigterm(demo)  # a stop by SIGTERM closes the app first: no export is left behind
    demo.launch(max_file_size=lab.config.max_upload_bytes, allowed_paths=[str(EXAMPLES_DIR)], theme=THEME,
                app_kwargs=app_kwargs(demo, lab, arrival=service.scoring.releases.arrival, limits=limits), **kwargs)
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    service = Service.start(LabConfig.from_env())
    if service.lab.device == "cpu":  # the built-ins' full-suite scores and linear/permute curves, in the background
        threading.Thread(target=service.warm, daemon=True, name="warm-up").start()
    # (on a GPU host the curves wait: ZeroGPU forks a worker per call, and a background thread cannot use its GPU)
    launch(service, server_name=os.environ.get("GRADIO_SERVER_NAME"), server_port=_port())


def _port() -> int | None:
    port = os.environ.get("GRADIO_SERVER_PORT")
    return int(port) if port else None


if __name__ == "__main__":
    main()

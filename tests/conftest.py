"""Fixtures for the app tests: tiny random encoders under the built-in names, and the app serving them."""
from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from merging.catalogue import MODEL_NAMES
from tiny import tiny_config, tiny_model

STUDENT_LAYERS = 1  # students differ from the full encoders, as the built-in ones do


def save_encoder_dir(model, path: Path) -> Path:
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000, "do_normalize": False,
         "feature_size": 1, "padding_value": 0.0, "return_attention_mask": False}))
    return path


def _nudged(model, seed: int, scale: float):
    """A copy of `model` with small random changes: a fine-tuned copy, or a student trained from a shared base."""
    copy = type(model)(model.config).eval()
    copy.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in copy.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return copy


def write_lab_models(root: Path) -> Path:
    """Random tiny stand-ins for every built-in encoder (tests only: never shipped)."""
    speech, music = tiny_model(seed=0), tiny_model(seed=1)
    base = tiny_model(tiny_config(num_hidden_layers=STUDENT_LAYERS), seed=2)
    models = {
        "speech": speech, "music": music, "speech_ft": _nudged(speech, 3, 0.01),
        "student_base": base, "student_speech": _nudged(base, 4, 0.05), "student_music": _nudged(base, 5, 0.05),
        "student_multi": _nudged(base, 6, 0.05),
    }
    for role, name in MODEL_NAMES.items():
        save_encoder_dir(models[role], root / name)
    return root


@pytest.fixture(scope="session")
def lab_models(tmp_path_factory) -> Path:
    return write_lab_models(tmp_path_factory.mktemp("lab-models"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


UPLOAD_LIMIT = 2 * 2**20


@contextlib.contextmanager
def served(service, **launch):
    """The app of `service` on a loopback port while the block runs (`launch`: more of `app.launch`'s arguments);
    yields its url."""
    import app

    port = free_port()
    demo = app.launch(service, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        # close() stops the server, not a handler still running in a Gradio worker thread (a refinement) nor the
        # scorer's input threads: daemon threads, and one still inside torch when the interpreter finalizes aborts it
        # ("terminate called without an active exception", exit 134)
        deadline = time.monotonic() + 120
        for thread in threading.enumerate():
            if thread.name.startswith("scores of "):
                thread.join(timeout=max(deadline - time.monotonic(), 0))
            elif thread.name == "AnyIO worker thread":  # a pool's worker lives on, idle, until its event loop ends
                while not _waits_for_work(thread) and time.monotonic() < deadline:
                    time.sleep(0.05)


def _waits_for_work(thread: threading.Thread) -> bool:
    """Whether a pool's worker thread has ended or waits on its queue for the next task."""
    frame = sys._current_frames().get(thread.ident)
    if frame is None:
        return True
    while frame is not None:
        if frame.f_code.co_name == "get" and frame.f_code.co_filename.endswith("queue.py"):
            return frame.f_back is not None and frame.f_back.f_code.co_name == "run"
        frame = frame.f_back
    return False


@pytest.fixture(scope="session")
def app_server(lab_models):
    """The app on a loopback port, serving the tiny encoders; yields (url, service)."""
    from merging.service import LabConfig, Service

    # a quick stage's budget below the tiny encoders' full suite (about 2 s here), so that a merge is staged on any machine
    service = Service.start(LabConfig(models_dir=lab_models, calibration_limit=32, fit_iterations=20,
                                      max_upload_bytes=UPLOAD_LIMIT), budget_seconds=0.25)
    with served(service) as url:
        yield url, service

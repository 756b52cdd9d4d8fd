"""The built-in encoders: where they live, the role each plays, and which role fills each input of a method."""
from __future__ import annotations

from pathlib import Path

from . import methods  # noqa: F401 -- fills the registry
from .registry import get_method

MODELS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
MODEL_NAMES = {
    "speech": "tiny-hubert-speech",
    "music": "tiny-mert-music",
    "student_base": "tiny-base",
    "student_speech": "tiny-student-speech",
    "student_music": "tiny-student-music",
    "student_multi": "tiny-student-multi",
    "speech_ft": "tiny-hubert-speech-ft",
}
# The roles a person chooses an encoder for in the app (the multi-teacher student is only benchmarked).
LAB_ROLES = ("speech", "music", "student_base", "student_speech", "student_music", "speech_ft")
# A full-encoder method's input role -> the role that fills it; task-vector methods take the students and their base.
_FULL_ROLES = {"speech": "speech", "music": "music", "pretrained": "speech", "finetuned": "speech_ft"}


def method_roles(method: str) -> dict[str, str]:
    """Method input role -> the catalogue role whose encoder fills it."""
    declared = get_method(method)
    return {role: f"student_{role}" if declared.task_vector else _FULL_ROLES[role] for role in declared.inputs}

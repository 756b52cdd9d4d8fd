"""Operator settings of the service: environment variables only, nothing a page can choose."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..catalogue import MODELS_DIR

PAPER_HUB_ENCODERS = ("facebook/hubert-base-ls960", "m-a-p/MERT-v0-public")


@dataclass(frozen=True)
class LabConfig:
    """Operator settings (environment variables in `from_env`); nothing here comes from the page."""

    models_dir: Path = MODELS_DIR
    extra_encoders: tuple[str, ...] = ()  # allow-listed hub ids or local model folders
    device: str = "auto"
    max_clip_seconds: float = 30.0
    max_upload_bytes: int = 20 * 2**20
    calibration_limit: int | None = None
    fit_iterations: int = 30  # L-BFGS iterations per probe below the full suite (the full suite: the benchmark's 100)
    quick_seconds: float = 2.0  # the first answer's time budget: its stage is the largest that fits
    threads: int = 0  # torch threads for feature extraction (0: torch's default)
    max_disk_bytes: int = 2 * 2**30  # the app's files on disk: uploads, Gradio's copies and exports together

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LabConfig:
        """MERGE_LAB_MODELS, MERGE_LAB_ENCODERS (comma-separated; on a Space the paper's two hub encoders by
        default), MERGE_LAB_DEVICE, MERGE_LAB_MAX_UPLOAD_MB, MERGE_LAB_CALIBRATION_LIMIT, MERGE_LAB_FIT_ITERATIONS,
        MERGE_LAB_QUICK_SECONDS, MERGE_LAB_THREADS, MERGE_LAB_DISK_MB."""
        default_extra = ",".join(PAPER_HUB_ENCODERS) if environ.get("SPACE_ID") else ""
        extra = tuple(s.strip() for s in environ.get("MERGE_LAB_ENCODERS", default_extra).split(",") if s.strip())
        limit = environ.get("MERGE_LAB_CALIBRATION_LIMIT")
        return cls(
            models_dir=Path(environ.get("MERGE_LAB_MODELS", MODELS_DIR)),
            extra_encoders=extra,
            device=environ.get("MERGE_LAB_DEVICE", "auto"),
            max_upload_bytes=int(float(environ.get("MERGE_LAB_MAX_UPLOAD_MB", 20)) * 2**20),
            calibration_limit=int(limit) if limit else None,
            fit_iterations=int(environ.get("MERGE_LAB_FIT_ITERATIONS", cls.fit_iterations)),
            quick_seconds=float(environ.get("MERGE_LAB_QUICK_SECONDS", cls.quick_seconds)),
            threads=int(environ.get("MERGE_LAB_THREADS", cls.threads)),
            max_disk_bytes=int(float(environ.get("MERGE_LAB_DISK_MB", cls.max_disk_bytes / 2**20)) * 2**20),
        )

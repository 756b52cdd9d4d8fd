"""Operator settings of the service: environment variables only, nothing a page can choose."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..catalogue import MODELS_DIR
from .exports import IDLE_SECONDS

PAPER_HUB_ENCODERS = ("facebook/hubert-base-ls960", "m-a-p/MERT-v0-public")
NO_CACHE = ("", "none", "off")  # MERGE_LAB_CACHE values that keep no result store


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Beside Gradio's file cache (GRADIO_TEMP_DIR, else the system's temporary folder's `gradio`), not inside it:
    Gradio's hourly clean-up deletes old files there."""
    gradio = Path(environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    return gradio.parent / "merge-lab-cache"


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
    max_disk_bytes: int = 2 * 2**30  # the app's files on disk: uploads, Gradio's copies, exports and the result store
    cache_dir: Path | None = None  # the result store's folder (None: results are kept in memory only)
    cache_bytes: int = 2**30  # the result store's share of `max_disk_bytes`, pruned least recently used first
    idle_seconds: float = IDLE_SECONDS  # an upload unused, or an export unfetched, this long is removed
    upload_share: float = 0.25  # the part of the uploads' space one visitor may hold

    @property
    def files_bytes(self) -> int:
        """The disk cap less the result store's share: uploads, Gradio's copies and exports."""
        return self.max_disk_bytes - (self.cache_bytes if self.cache_dir is not None else 0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LabConfig:
        """MERGE_LAB_MODELS, MERGE_LAB_ENCODERS (comma-separated; on a Space the paper's two hub encoders by
        default), MERGE_LAB_DEVICE, MERGE_LAB_MAX_UPLOAD_MB, MERGE_LAB_CALIBRATION_LIMIT, MERGE_LAB_FIT_ITERATIONS,
        MERGE_LAB_QUICK_SECONDS, MERGE_LAB_THREADS, MERGE_LAB_DISK_MB, MERGE_LAB_CACHE (the result store's folder,
        `default_cache_dir` by default; "none" keeps none), MERGE_LAB_CACHE_MB (its share of the disk cap: half
        by default), MERGE_LAB_IDLE_MINUTES and MERGE_LAB_UPLOAD_SHARE."""
        default_extra = ",".join(PAPER_HUB_ENCODERS) if environ.get("SPACE_ID") else ""
        extra = tuple(s.strip() for s in environ.get("MERGE_LAB_ENCODERS", default_extra).split(",") if s.strip())
        limit = environ.get("MERGE_LAB_CALIBRATION_LIMIT")
        disk = int(float(environ.get("MERGE_LAB_DISK_MB", cls.max_disk_bytes / 2**20)) * 2**20)
        cache = environ.get("MERGE_LAB_CACHE", str(default_cache_dir(environ)))
        return cls(
            models_dir=Path(environ.get("MERGE_LAB_MODELS", MODELS_DIR)),
            extra_encoders=extra,
            device=environ.get("MERGE_LAB_DEVICE", "auto"),
            max_upload_bytes=int(float(environ.get("MERGE_LAB_MAX_UPLOAD_MB", 20)) * 2**20),
            calibration_limit=int(limit) if limit else None,
            fit_iterations=int(environ.get("MERGE_LAB_FIT_ITERATIONS", cls.fit_iterations)),
            quick_seconds=float(environ.get("MERGE_LAB_QUICK_SECONDS", cls.quick_seconds)),
            threads=int(environ.get("MERGE_LAB_THREADS", cls.threads)),
            max_disk_bytes=disk,
            cache_dir=None if cache.strip().lower() in NO_CACHE else Path(cache),
            cache_bytes=min(int(float(environ.get("MERGE_LAB_CACHE_MB", disk / 2**21)) * 2**20), disk),
            idle_seconds=float(environ.get("MERGE_LAB_IDLE_MINUTES", cls.idle_seconds / 60)) * 60,
            upload_share=float(environ.get("MERGE_LAB_UPLOAD_SHARE", cls.upload_share)),
        )

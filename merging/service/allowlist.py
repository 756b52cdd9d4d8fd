"""The encoders a page may ask for: an allow-list, each loaded once and shared read-only."""
from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from ..catalogue import MODEL_NAMES
from ..encoders import Encoder, load_encoder
from ..state import MergeError, state_checksum


class AllowList:
    """The encoders a page may ask for, by key: the built-in names (under `models_dir`) and the operator's
    extra hub ids and folders. Each is loaded once, on first use, and shared; nobody mutates it."""

    def __init__(self, models_dir: Path, extra: Sequence[str] = ()) -> None:
        self.models_dir = Path(models_dir)
        self.extra = tuple(extra)
        self._loaded: dict[str, Encoder] = {}
        self._checksums: dict[str, str] = {}
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        return [*MODEL_NAMES.values(), *self.extra]

    def default(self, role: str) -> str:
        return MODEL_NAMES[role]

    def label(self, key: str) -> str:
        if key in MODEL_NAMES.values():
            return key if (self.models_dir / key).is_dir() else f"{key} (missing)"
        return key

    def get(self, key: str) -> Encoder:
        """The loaded encoder; MergeError for a key outside the allow-list, a missing model or a bad checkpoint."""
        if key not in self.keys():
            raise MergeError(f"'{key}' is not one of this app's encoders; the operator sets them (MERGE_LAB_ENCODERS)")
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = self._load(key)
            return self._loaded[key]

    def checksum(self, key: str) -> str:
        encoder = self.get(key)
        with self._lock:
            if key not in self._checksums:
                self._checksums[key] = state_checksum(encoder.state_dict())
            return self._checksums[key]

    def _load(self, key: str) -> Encoder:
        local_extra = [Path(k) for k in self.extra if Path(k).exists()]
        hub_extra = [k for k in self.extra if not Path(k).exists()]
        if key in MODEL_NAMES.values():
            source = self.models_dir / key
            if not source.is_dir():
                raise MergeError(f"built-in encoder '{key}' is not in {self.models_dir}: "
                                 "train it, or point MERGE_LAB_MODELS at a folder that holds it")
        else:
            source = key
        return load_encoder(source, allowed_roots=[self.models_dir, *local_extra], allowed_hub_ids=hub_extra)

"""A private temporary folder for exported zips, capped in count and removed with its owner."""
from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path


class ExportFolder:
    """One sub-folder per export under a private temporary root; the oldest go beyond `keep`."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="merge-lab-exports-"))
        weakref.finalize(self, shutil.rmtree, self.root, True)  # the exports go with their owner, or at exit

    def new(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="export-", dir=self.root))

    def prune(self) -> None:
        folders = sorted(self.root.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in folders[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

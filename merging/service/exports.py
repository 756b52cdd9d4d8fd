"""A folder for exported zips, capped in count and bytes, removed with its owner."""
from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


class ExportFolder:
    """One sub-folder per export under a private temporary root (inside `parent` when given: the app puts it
    in Gradio's cache, so the zip is served without a second copy); beyond `keep` exports or `max_bytes`
    the oldest go (the newest always stays)."""

    def __init__(self, keep: int = 8, parent: Path | None = None, max_bytes: int | None = None) -> None:
        self.keep, self.max_bytes = keep, max_bytes
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="merge-lab-exports-", dir=parent))
        weakref.finalize(self, shutil.rmtree, self.root, True)  # the exports go with their owner, or at exit

    def new(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="export-", dir=self.root))

    def discard(self, path: Path) -> bool:
        """Remove the export that holds `path` (True), or nothing when `path` is not one of this folder's exports."""
        try:
            export = self.root / Path(path).resolve().relative_to(self.root.resolve()).parts[0]
        except (ValueError, IndexError):
            return False
        shutil.rmtree(export, ignore_errors=True)
        return True

    def bytes(self) -> int:
        return folder_bytes(self.root)

    def prune(self, keep: int | None = None) -> None:
        folders = sorted(self.root.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in folders[:-(keep or self.keep)]:
            shutil.rmtree(old, ignore_errors=True)
        while self.max_bytes is not None and self.bytes() > self.max_bytes and len(folders := sorted(
                self.root.iterdir(), key=lambda p: p.stat().st_mtime)) > 1:
            shutil.rmtree(folders[0], ignore_errors=True)

"""A folder for exported zips, each owned by the session that asked for it: capped in count and bytes per session and
in all, and a waiting export is never removed to make room for another session's."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
import weakref
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path

from ..state import MergeError

ROOT_PREFIX = "merge-lab-exports-"
IDLE_SECONDS = 1800.0  # an export nobody has fetched after this long is removed
_owner: ContextVar[str | None] = ContextVar("merge_lab_export_owner", default=None)
_live_roots: set[Path] = set()  # the roots of this process's ExportFolders


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (0 when it is gone)."""
    total = 0
    for parent, _, names in os.walk(folder):  # a folder removed meanwhile is skipped, not raised
        for name in names:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.stat(os.path.join(parent, name), follow_symlinks=False).st_size
    return total


@contextlib.contextmanager
def owned_by(owner: str | None):
    """Exports made inside the block belong to `owner` (a session): see `ExportFolder`."""
    token = _owner.set(owner)
    try:
        yield
    finally:
        _owner.reset(token)


def remove_leftovers(parent: Path, older_than: float = IDLE_SECONDS) -> list[Path]:
    """Remove the export roots under `parent` that no running process owns (left by a run that was killed), and roots
    not named by a process that have not changed for `older_than` seconds. Returns what was removed."""
    removed = []
    for root in Path(parent).glob(f"{ROOT_PREFIX}*"):
        if root.is_dir() and _left_over(root, older_than):
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
    return removed


def _left_over(root: Path, older_than: float) -> bool:
    pid = root.name[len(ROOT_PREFIX):].split("-", 1)[0]
    if not pid.isdigit():
        return time.time() - root.stat().st_mtime > older_than
    if int(pid) == os.getpid():
        return root not in _live_roots
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's running process
        return False
    return False


def _zipped(folder: Path) -> bool:
    """Whether an export's folder holds its finished zip alone (its model folder is removed once zipped)."""
    entries = list(folder.iterdir())
    return bool(entries) and all(entry.suffix == ".zip" for entry in entries)


def _forget_root(root: Path) -> None:
    _live_roots.discard(root)
    shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class _Export:
    owner: str | None
    made: float  # time.monotonic() when its folder was made
    written: bool = False  # its zip is complete (`prune` has seen it)


class ExportFolder:
    """One sub-folder per export under a private temporary root (inside `parent` when given: the app puts it in
    Gradio's cache, so the zip is served without a second copy). A session (`owned_by`) keeps at most `per_owner`
    exports, its newest; in all there are at most `keep` exports and `max_bytes` (an export being written counts as
    twice the largest zip so far: its folder and its zip). Room is made from unowned exports, oldest first; when none
    is left, the new export is refused with a one-line message: another session's waiting export is never removed."""

    def __init__(self, keep: int = 8, parent: Path | None = None, max_bytes: int | None = None, *,
                 per_owner: int = 1) -> None:
        self.keep, self.max_bytes, self.per_owner = keep, max_bytes, per_owner
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-", dir=parent))
        _live_roots.add(self.root)
        self._exports: dict[Path, _Export] = {}
        self._largest = 0  # bytes of the largest zip so far
        self._lock = threading.Lock()
        weakref.finalize(self, _forget_root, self.root)  # the exports go with their owner, or at exit

    def new(self) -> Path:
        """A folder for the current owner's next export (`owned_by`); MergeError when the caps leave no room."""
        owner = _owner.get()
        with self._lock:
            self._forget_missing()
            owned = self._oldest_first(lambda export: owner is not None and export.owner == owner)
            for old in owned[:max(0, len(owned) - self.per_owner + 1)]:
                self._remove(old)
            if not self._made_room(extra=1):
                raise MergeError(f"{len(self._exports)} downloads are waiting to be fetched and fill the server's "
                                 "space for them: try again in a few minutes")
            folder = Path(tempfile.mkdtemp(prefix="export-", dir=self.root))
            self._exports[folder] = _Export(owner, time.monotonic())
            return folder

    def prune(self) -> None:
        """Hold the caps once an export's zip is written: unowned exports go first, oldest first; an export just
        written that still does not fit goes, and MergeError says so."""
        with self._lock:
            self._forget_missing()
            done = [folder for folder, export in self._exports.items() if not export.written and _zipped(folder)]
            for folder in done:
                self._exports[folder] = replace(self._exports[folder], written=True)
                self._largest = max(self._largest, folder_bytes(folder))
            if not self._made_room(extra=0):
                for folder in done:
                    self._remove(folder)
                raise MergeError("this download does not fit in the server's space for downloads: try again later")

    def export_of(self, path: Path | str) -> Path | None:
        """The export folder under this root that holds `path` (made absolute as Gradio's file route does), or None."""
        try:
            parts = Path(os.path.abspath(path)).resolve().relative_to(self.root.resolve()).parts
        except (ValueError, OSError):
            return None
        return self.root / parts[0] if parts else None

    def discard(self, path: Path | str) -> bool:
        """Remove the export that holds `path` (True), or nothing when `path` is not one of this folder's exports."""
        export = self.export_of(path)
        if export is None:
            return False
        with self._lock:
            self._remove(export)
        return True

    def release(self, owner: str) -> None:
        """`owner`'s session has ended: its exports go."""
        with self._lock:
            for folder in self._oldest_first(lambda export: export.owner == owner):
                self._remove(folder)

    def sweep(self, older_than: float = IDLE_SECONDS) -> None:
        """Remove the exports nobody fetched within `older_than` seconds."""
        with self._lock:
            now = time.monotonic()
            for folder in self._oldest_first(lambda export: now - export.made > older_than):
                self._remove(folder)

    def clear(self) -> None:
        """Remove every export (the server is stopping: nothing can fetch them any more)."""
        with self._lock:
            for folder in list(self._exports):
                self._remove(folder)

    def bytes(self) -> int:
        return folder_bytes(self.root)

    def _oldest_first(self, which) -> list[Path]:
        return sorted((f for f, e in self._exports.items() if which(e)), key=lambda f: self._exports[f].made)

    def _made_room(self, extra: int) -> bool:
        """Whether, after removing unowned exports (oldest first) as needed, `extra` more exports fit the caps."""
        unowned = self._oldest_first(lambda export: export.owner is None)
        while self._over(extra) and unowned:
            self._remove(unowned.pop(0))
        return not self._over(extra)

    def _over(self, extra: int) -> bool:
        if len(self._exports) + extra > self.keep:
            return True
        if self.max_bytes is None:
            return False
        return sum(map(self._footprint, self._exports)) + extra * 2 * self._largest > self.max_bytes

    def _footprint(self, folder: Path) -> int:
        size = folder_bytes(folder)
        return size if self._exports[folder].written else max(size, 2 * self._largest)

    def _forget_missing(self) -> None:
        """Drop the exports whose folder is gone (a failed export removes its own)."""
        for folder in [f for f in self._exports if not f.is_dir()]:
            del self._exports[folder]

    def _remove(self, folder: Path) -> None:
        self._exports.pop(folder, None)
        shutil.rmtree(folder, ignore_errors=True)

"""The app's files on disk: `Disk` keeps them under a cap as a running total that charges an upload before a byte of
it is stored and makes room fairly (no visitor can take the space another needs); what Gradio records as the app's
files; the temporary files of uploads in progress; and what earlier runs left behind."""
from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from merging.service.exports import IDLE_SECONDS, ExportFolder, remove_leftovers

LEFTOVER_SECONDS = 3600.0  # an upload's temporary file this old at start-up was left by an earlier run
EXPORTS_FOLDER = "merge-lab-exports"  # under Gradio's cache


@dataclass
class _Upload:
    size: int
    owner: str  # who holds it: the last session that used it, else the client address that sent it
    used: float  # time.monotonic() when it was stored or last used
    sessions: set[str] = field(default_factory=set)


@dataclass
class _Reservation:
    holder: str
    size: int  # bytes charged: the declared size; once cut off, what had arrived
    received: int = 0
    revoked: bool = False


class Disk:
    """The app's files against `cap`, as a running total: the files Gradio records as the app's (`files()`: its
    copies, measured now and then) that are not uploads, plus each stored upload, plus what uploads in progress have
    reserved (their declared size, charged before a byte is stored). Room for an upload is made, in this order, from
    its sender's stored uploads beyond `share`, from the stored uploads of whoever stores the most (least recently used
    first), then by cutting off the newest upload in progress of whoever holds more than the sender would: no visitor
    can take the space another needs. An upload unused for `idle_seconds` goes, and so do a session's when it ends.
    Thread-safe."""

    def __init__(self, cap: int, *, files: Callable[[], Iterable[str]],
                 forget: Callable[[str], None] = lambda path: None, share: int | None = None,
                 idle_seconds: float = IDLE_SECONDS) -> None:
        self.cap, self.share, self.idle_seconds = cap, share or cap, idle_seconds
        self._files, self._forget = files, forget
        self._uploads: dict[str, _Upload] = {}
        self._reserved: dict[int, _Reservation] = {}
        self._tickets = itertools.count()
        self._copies, self._measured_at = 0, float("-inf")
        self._lock = threading.Lock()

    def total(self) -> int:
        with self._lock:
            return self._total()

    def measure(self) -> None:
        """Measure the app's files that are not uploads (a stat of each)."""
        with self._lock:
            uploads, started = set(self._uploads), time.monotonic()
        copies = sum(_size(path) for path in self._files() if path not in uploads)
        with self._lock:
            self._copies, self._measured_at = copies, started

    def stale(self, seconds: float = 1.0) -> bool:
        return time.monotonic() - self._measured_at > seconds

    def admit(self, holder: str, size: int) -> int | None:
        """A ticket reserving `size` bytes for an upload from `holder`, once room is made; None when its own uploads in
        progress, those of visitors holding no more than it would, and the files that cannot go leave no room."""
        with self._lock:
            self._drop_idle()
            self._evict(lambda: self._held(holder) + size > self.share, lambda: holder)
            if self._held(holder) + size > self.share:
                return None
            self._evict(lambda: self._total() + size > self.cap, self._largest_storer)
            while self._total() + size > self.cap and self._revoke_for(self._held(holder) + size):
                pass
            if self._total() + size > self.cap:
                return None
            ticket = next(self._tickets)
            self._reserved[ticket] = _Reservation(holder, size)
            return ticket

    def progress(self, ticket: int, received: int) -> bool:
        """`received` bytes of the upload of `ticket` have arrived; False when it has been cut off to make room."""
        with self._lock:
            reservation = self._reserved.get(ticket)
            if reservation is None or reservation.revoked:
                return False
            reservation.received = received
            return received <= reservation.size

    def stored(self, ticket: int, paths: Iterable[str]) -> None:
        """The upload of `ticket` is stored at `paths`: they count at their size instead of the reservation."""
        with self._lock:
            reservation = self._reserved.pop(ticket, None)
            holder = reservation.holder if reservation else "unknown"
            for path in paths:
                upload = self._uploads.get(path)  # the same bytes again land on the same path
                if upload is None:
                    self._uploads[path] = _Upload(_size(path), holder, time.monotonic())
                else:
                    upload.used = time.monotonic()

    def release(self, ticket: int) -> None:
        """The upload of `ticket` stored nothing (its temporary file is gone)."""
        with self._lock:
            self._reserved.pop(ticket, None)

    def used(self, path: str, session: str | None) -> None:
        """An event of `session` uses the upload at `path` (if it is one): the session holds it from now on."""
        with self._lock:
            upload = self._uploads.get(path)
            if upload is not None:
                upload.used = time.monotonic()
                if session:
                    upload.sessions.add(session)
                    upload.owner = session

    def end_session(self, session: str) -> None:
        """`session` has ended: the uploads only it used go."""
        with self._lock:
            for path, upload in list(self._uploads.items()):
                if session in upload.sessions:
                    upload.sessions.discard(session)
                    if not upload.sessions:
                        self._delete(path)

    def sweep(self) -> None:
        with self._lock:
            self._drop_idle()

    def uploads(self) -> list[str]:
        with self._lock:
            return list(self._uploads)

    def _total(self) -> int:
        return (self._copies + sum(upload.size for upload in self._uploads.values())
                + sum(reservation.size for reservation in self._reserved.values()))

    def _held(self, holder: str) -> int:
        return (sum(upload.size for upload in self._uploads.values() if upload.owner == holder)
                + sum(r.size for r in self._reserved.values() if r.holder == holder))

    def _largest_storer(self) -> str | None:
        stored = Counter()
        for upload in self._uploads.values():
            stored[upload.owner] += upload.size
        return stored.most_common(1)[0][0] if stored else None

    def _evict(self, needed: Callable[[], bool], whose: Callable[[], str | None]) -> None:
        """Remove `whose()`'s least recently used stored upload while `needed()`."""
        while needed():
            holder = whose()
            paths = [path for path, upload in self._uploads.items() if upload.owner == holder]
            if not paths:
                return
            self._delete(min(paths, key=lambda path: self._uploads[path].used))

    def _revoke_for(self, need: int) -> bool:
        """Cut off the newest upload in progress of whoever holds the most, if that is more than `need`."""
        live = [(ticket, r) for ticket, r in self._reserved.items() if not r.revoked]
        holders = {r.holder for _, r in live}
        victim = max(holders, key=self._held, default=None)
        if victim is None or self._held(victim) <= need:
            return False
        ticket, reservation = max((t, r) for t, r in live if r.holder == victim)
        reservation.revoked, reservation.size = True, reservation.received  # what arrived stays charged until removed
        return True

    def _drop_idle(self) -> None:
        now = time.monotonic()
        for path in [p for p, upload in self._uploads.items() if now - upload.used > self.idle_seconds]:
            self._delete(path)

    def _delete(self, path: str) -> None:
        self._uploads.pop(path, None)
        with contextlib.suppress(OSError):
            Path(path).unlink()
            Path(path).parent.rmdir()  # its folder (named by its checksum), when nothing else is in it
        self._forget(path)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def gradio_files(demo, exports: Callable[[], ExportFolder]) -> Callable[[], list[str]]:
    """The files Gradio records as written by `demo` (uploads and its copies), exports left out (they have their
    own cap)."""
    def files() -> list[str]:
        root = str(exports().root)
        return [path for paths in list(demo.temp_file_sets) for path in list(paths) if not path.startswith(root)]

    return files


def forget_in(demo) -> Callable[[str], None]:
    """Drop a removed file from Gradio's records of `demo`'s files."""
    def forget(path: str) -> None:
        for paths in list(demo.temp_file_sets):
            paths.discard(path)

    return forget


# temporary files of uploads in progress: Gradio's upload parser writes <upload folder>/tmp…, renamed once complete


def temporaries(folder: Path) -> set[str]:
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        return {e.name for e in entries if e.name.startswith("tmp") and e.is_file(follow_symlinks=False)}
    return set()


def remove_temporaries(folder: Path, names: Iterable[str], older_than: float) -> None:
    """Remove the temporary files `names` of `folder` last changed more than `older_than` seconds ago."""
    for name in names:
        path = Path(folder) / name
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > older_than:
                path.unlink()


def remove_left_behind(folder: Path, names: Iterable[str], begins: bytes) -> list[str]:
    """Remove the temporary files `names` of `folder` that begin with `begins` and that this process no longer has
    open (an upload in progress keeps its file open). Returns those it had to leave, still open."""
    still_open, open_now = [], _open_files()
    for name in names:
        path = Path(folder) / name
        with contextlib.suppress(OSError):
            with path.open("rb") as file:
                if file.read(len(begins)) != begins:
                    continue
            if str(path.resolve()) in open_now:
                still_open.append(name)
            else:
                path.unlink()
    return still_open


def _open_files() -> set[str]:
    """The files this process has open (Linux; elsewhere none are known)."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                found.add(os.path.realpath(f"/proc/self/fd/{fd}"))
    return found


def remove_leftovers_of_earlier_runs(cache: Path) -> None:
    """Start-up: exports of runs that are no longer running, and uploads' temporary files an earlier run left."""
    remove_leftovers(Path(cache) / EXPORTS_FOLDER)
    remove_leftovers(Path(tempfile.gettempdir()))  # the exports of a lab that was never served
    remove_temporaries(Path(cache), temporaries(Path(cache)), older_than=LEFTOVER_SECONDS)

"""The result store: what took long to compute (the inputs' full-suite features and scores, alignments, recipes'
full-suite scores), kept on disk under one folder and found again after a restart by the checksums of what produced
it. An SQLite index (a row per entry: its key, file, checksum, size and last use) beside one safetensors file per entry
(named arrays and a JSON header). A write is atomic (a temporary file renamed into place, then the index row in one
transaction); a read checks the file's checksum, and an entry that does not match is dropped (recomputed by the
caller, never served); beyond `max_bytes` the least recently used entries go first. Several processes may share one
folder: SQLite serialises their index updates (a writer waits for the other), and files are only ever renamed into
place or removed. A read-only layer of shipped entries (`Shipped`, e.g. the built-ins' warm results in assets/) is
read when the folder lacks an entry."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import sqlite3
import struct
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors, save as save_tensors

STORE_FORMAT = 1  # bump when an entry's layout changes: every key changes with it
TEMPORARY_SECONDS = 3600  # a writer's temporary file older than this was left by a process that died


def digest(*parts: object) -> str:
    """A short stable name of JSON-able parts (a key, settings)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def code_version(*objects: object) -> str:
    """A checksum of the source of functions, classes or modules: changes when their code does."""
    return digest(*(inspect.getsource(obj) for obj in objects))


def _bytes_checksum(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class Entry:
    """What a store keeps under one key: named tensors and a JSON-able header."""

    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def encode(self) -> bytes:
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.tensors.items()}
        return save_tensors(tensors, metadata={"meta": json.dumps(self.meta, sort_keys=True)})

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
        return cls(load_tensors(data), json.loads(header.get("__metadata__", {}).get("meta", "{}")))


@dataclass
class Counts:
    """What a store did since it was opened (tests count recomputations by them)."""

    hits: int = 0
    misses: int = 0
    rejected: int = 0  # entries dropped because their file was missing or did not match its checksum
    written: int = 0


class Shipped:
    """Read-only entries shipped with the code: a folder of entry files and `manifest.json`
    ({"entries": {id: {"key", "file", "checksum", "bytes"}}, "made_from": {...}})."""

    MANIFEST = "manifest.json"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest = self.folder / self.MANIFEST
        self.manifest = json.loads(manifest.read_text()) if manifest.is_file() else {"entries": {}}

    @property
    def entries(self) -> dict[str, dict]:
        return self.manifest["entries"]

    def __contains__(self, key_id: str) -> bool:
        return key_id in self.entries

    def read(self, key_id: str) -> bytes | None:
        """The entry's bytes when they match the manifest's checksum; None otherwise."""
        row = self.entries.get(key_id)
        if row is None:
            return None
        try:
            data = (self.folder / row["file"]).read_bytes()
        except OSError:
            return None
        return data if _bytes_checksum(data) == row["checksum"] else None


class Store:
    """Entries by key on disk under `folder`, at most `max_bytes` of them (an entry over half of it is not kept)."""

    INDEX = "index.sqlite"

    def __init__(self, folder: Path, max_bytes: int, shipped: Shipped | None = None) -> None:
        self.folder, self.max_bytes, self.shipped = Path(folder), int(max_bytes), shipped
        self.counts = Counts()
        self._lock = threading.Lock()
        (self.folder / "entries").mkdir(parents=True, exist_ok=True)
        with self._index() as db:
            db.execute("CREATE TABLE IF NOT EXISTS entries (id TEXT PRIMARY KEY, key TEXT NOT NULL, file TEXT NOT NULL, "
                       "checksum TEXT NOT NULL, bytes INTEGER NOT NULL, used REAL NOT NULL)")
        self._remove_stale_temporaries()

    def _index(self) -> _Transaction:
        """A connection for one transaction (`with`): one per call, so threads and processes never share one."""
        db = sqlite3.connect(self.folder / self.INDEX, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return _Transaction(db)

    # -- reading --------------------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        """Whether an entry is listed under `key` (its file is checked only when it is read)."""
        key_id = digest(key)
        with self._index() as db:
            found = db.execute("SELECT 1 FROM entries WHERE id = ?", (key_id,)).fetchone() is not None
        return found or (self.shipped is not None and key_id in self.shipped)

    def get(self, key: object) -> Entry | None:
        """The entry stored under `key` (any JSON-able value), or None when there is none or its file does not
        match its checksum (that entry is then dropped)."""
        key_id = digest(key)
        data = self._read(key_id) or (self.shipped.read(key_id) if self.shipped else None)
        with self._lock:
            if data is None:
                self.counts.misses += 1
                return None
            self.counts.hits += 1
        return Entry.decode(data)

    def _read(self, key_id: str) -> bytes | None:
        with self._index() as db:
            row = db.execute("SELECT file, checksum FROM entries WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            return None
        file, checksum = row
        try:
            data = (self.folder / "entries" / file).read_bytes()
        except OSError:
            data = None
        if data is None or _bytes_checksum(data) != checksum:
            self._drop(key_id, file)
            return None
        with self._index() as db:
            db.execute("UPDATE entries SET used = ? WHERE id = ?", (time.time(), key_id))
        return data

    def _drop(self, key_id: str, file: str) -> None:
        """Remove an entry whose file is missing or corrupt (unless another process replaced it meanwhile)."""
        with self._lock:
            self.counts.rejected += 1
        with self._index() as db:
            db.execute("DELETE FROM entries WHERE id = ? AND file = ?", (key_id, file))
        (self.folder / "entries" / file).unlink(missing_ok=True)

    # -- writing --------------------------------------------------------------------------------------

    def put(self, key: object, entry: Entry) -> bool:
        """Keep `entry` under `key` (replacing any), then prune the least recently used beyond `max_bytes`; False
        when the entry alone is over half of `max_bytes` (nothing is written)."""
        data = entry.encode()
        if len(data) > self.max_bytes // 2:
            return False
        key_id, checksum = digest(key), _bytes_checksum(data)
        file = f"{key_id}-{checksum}.safetensors"  # a file's name names its content: writers never clash
        self._write_file(self.folder / "entries" / file, data)
        with self._index() as db:
            old = db.execute("SELECT file FROM entries WHERE id = ?", (key_id,)).fetchone()
            db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                       (key_id, json.dumps(key, sort_keys=True, default=str), file, checksum, len(data), time.time()))
        if old is not None and old[0] != file:
            (self.folder / "entries" / old[0]).unlink(missing_ok=True)
        with self._lock:
            self.counts.written += 1
        self.prune()
        return True

    def _write_file(self, path: Path, data: bytes) -> None:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".writing-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def prune(self, max_bytes: int | None = None) -> None:
        """Remove the least recently used entries until they hold at most `max_bytes` (default the store's)."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        while True:
            with self._index() as db:
                total = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM entries").fetchone()[0]
                if total <= limit:
                    return
                key_id, file = db.execute("SELECT id, file FROM entries ORDER BY used LIMIT 1").fetchone()
                db.execute("DELETE FROM entries WHERE id = ? AND file = ?", (key_id, file))
            (self.folder / "entries" / file).unlink(missing_ok=True)

    def bytes(self) -> int:
        with self._index() as db:
            return db.execute("SELECT COALESCE(SUM(bytes), 0) FROM entries").fetchone()[0]

    def rows(self) -> list[dict]:
        """Every entry's index row (id, key, file, checksum, bytes), oldest use first."""
        with self._index() as db:
            found = db.execute("SELECT id, key, file, checksum, bytes FROM entries ORDER BY used").fetchall()
        return [dict(zip(("id", "key", "file", "checksum", "bytes"), row)) for row in found]

    def path(self, row: Mapping) -> Path:
        """Where an index row's file lies."""
        return self.folder / "entries" / row["file"]

    def _remove_stale_temporaries(self) -> None:
        for temporary in (self.folder / "entries").glob(".writing-*.tmp"):
            try:
                if time.time() - temporary.stat().st_mtime > TEMPORARY_SECONDS:
                    temporary.unlink()
            except OSError:
                pass


class _Transaction:
    """`with` a connection: one immediate transaction, committed on success, rolled back on error, then closed."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, error, trace) -> None:
        try:
            self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self.db.close()


WARM_DIR = Path(__file__).resolve().parents[2] / "assets" / "warm"  # the built-ins' results, shipped (scripts/make_warm.py)


# -- what entries hold: raw results (per-clip outcomes, probes' tensors, features, permutations), never estimates ----

def results_entry(results: Mapping, tensors: Mapping[str, torch.Tensor] | None = None, meta: Mapping | None = None,
                  prefix: str = "") -> Entry:
    """Per task (a `merging.live.TaskResult`): which test clips it got right, those clips, its accuracy (in
    `meta["tasks"]`, in order) and its probe's tensors, named after `prefix` and the task; `tensors` and `meta` are
    kept beside them."""
    out = dict(tensors or {})
    for task, result in results.items():
        out[f"{prefix}{task}/correct"] = torch.tensor(result.correct, dtype=torch.bool)
        out[f"{prefix}{task}/clips"] = torch.tensor(result.clips, dtype=torch.int64)
        if result.probe is not None:
            out.update({f"{prefix}{task}/probe.{name}": getattr(result.probe, name) for name in _probe_fields()})
    return Entry(out, {**(meta or {}), "tasks": [[task, result.accuracy] for task, result in results.items()]})


def results_of(entry: Entry, prefix: str = "", tasks: list | None = None) -> dict:
    """The {task: TaskResult} an entry of `results_entry` holds, in their order (`tasks`: the [task, accuracy] list of
    another prefix's results)."""
    from ..live import TaskResult
    from ..probes import LinearProbe

    tensors, results = entry.tensors, {}
    for task, accuracy in entry.meta["tasks"] if tasks is None else tasks:
        name = f"{prefix}{task}/"
        fields = {field: tensors.get(f"{name}probe.{field}") for field in _probe_fields()}
        probe = LinearProbe(**fields) if all(t is not None for t in fields.values()) else None
        results[task] = TaskResult(float(accuracy), tuple(tensors[f"{name}correct"].tolist()),
                                   tuple(tensors[f"{name}clips"].tolist()), probe)
    return results


def _probe_fields() -> tuple[str, ...]:
    from dataclasses import fields

    from ..probes import LinearProbe

    return tuple(f.name for f in fields(LinearProbe))


def alignment_entry(alignment) -> Entry:
    """An `Alignment`'s permutations and before/after scores, exactly, and its similarity matrices at half precision
    (they are only drawn: every number the lab computes from an alignment comes from the exact parts)."""
    tensors = {}
    for name, group in alignment.groups.items():
        tensors[f"{name}/perm"] = group.perm.to(torch.int64)
        tensors[f"{name}/similarity"] = group.similarity.to(torch.float16)
    meta = {"method": alignment.method, "components": list(alignment.components), "absolute": alignment.absolute,
            "groups": [[name, g.before, g.after] for name, g in alignment.groups.items()], "timings": alignment.timings}
    return Entry(tensors, meta)


def alignment_of(entry: Entry, spec):
    """The `Alignment` an entry of `alignment_entry` holds, on the permutation spec of the encoders it aligns."""
    from ..align import Alignment, GroupAlignment

    tensors, meta = entry.tensors, entry.meta
    groups = {name: GroupAlignment(spec.groups[name], tensors[f"{name}/perm"], tensors[f"{name}/similarity"].float(),
                                   float(before), float(after)) for name, before, after in meta["groups"]}
    return Alignment(spec, meta["method"], tuple(meta["components"]), bool(meta["absolute"]), groups,
                     dict(meta["timings"]))

"""What a client can make the server store, and the order its requests count in: the app's ASGI middlewares and
their housekeeping, over the disk's running total (`app_disk.Disk`).

`UploadLimit` admits uploads against it (one file each, cut off when they stall), `Joins` checks the requests that
start an event and tells the disk which uploads a session uses, `Sessions` notices a session's end (its uploads and
exports go), `DownloadOnce` serves an export once, `Arrivals` numbers releases as they arrive, and `housekeeping`
removes what has been idle too long and, when the server stops, every export."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header

from app_disk import Disk, forget_in, gradio_files, remove_left_behind, temporaries
from merging.service.exports import IDLE_SECONDS, ExportFolder
from merging.state import quoted

MULTIPART_OVERHEAD = 64 * 2**10  # form boundaries and headers around the one file
MAX_EVENT_BODY = 4 * 2**20  # the JSON values of one event (the page sends short values and uploaded files' paths)


@dataclass(frozen=True)
class CrowdLimits:
    """How long things may wait and how much one visitor may hold."""

    idle_seconds: float = IDLE_SECONDS  # an upload unused, or an export unfetched, this long is removed
    session_grace_seconds: float = 30.0  # a session whose page has been gone this long has ended
    stall_seconds: float = 30.0  # an upload that sends nothing for this long is cut off
    upload_share: float = 0.25  # the part of the uploads' space one visitor (or session) may hold

    @classmethod
    def of(cls, config) -> CrowdLimits:
        """The operator's settings (`LabConfig`), the rest as they are."""
        return cls(idle_seconds=config.idle_seconds, upload_share=config.upload_share)


# the middlewares


async def answer(send, status: int, message: str) -> None:
    """A JSON refusal {"detail": message}."""
    body = json.dumps({"detail": message}).encode()
    with contextlib.suppress(OSError):  # the client may be gone
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _post_to(scope) -> str | None:
    """The last segment of a POST's path (…/upload -> 'upload'), or None for any other request."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    return scope["path"].rstrip("/").rsplit("/", 1)[-1]


def _visitor(scope) -> str:
    return (scope.get("client") or ("unknown",))[0]


class _UploadBody:
    """An upload's body as the app reads it, cut off (a disconnect, for the app) when nothing arrives for
    `stall_seconds`, when a second file begins, or when `arrived(bytes so far)` says no (past its declared length,
    or cut off to make room)."""

    def __init__(self, receive, boundary: bytes, arrived: Callable[[int], bool], stall_seconds: float) -> None:
        self._receive, self.arrived, self.stall_seconds = receive, arrived, stall_seconds
        self.received, self.parts, self.cut, self.gone, self.begins = 0, 0, None, False, b""
        self._parser = MultipartParser(boundary, {"on_part_begin": self._part_begins, "on_part_data": self._part_data})

    def _part_begins(self) -> None:
        self.parts += 1

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.parts == 1 and len(self.begins) < 64:  # the file's first bytes: they name its temporary file
            self.begins += data[start:min(end, start + 64 - len(self.begins))]

    async def receive(self):
        if self.cut is None:
            try:
                message = await asyncio.wait_for(self._receive(), self.stall_seconds)
            except TimeoutError:
                self.cut = "stalled"
            else:
                self.gone = message["type"] == "http.disconnect"
                self._count(message.get("body", b""))
                if self.cut is None:
                    return message
        return {"type": "http.disconnect"}

    def _count(self, chunk: bytes) -> None:
        self.received += len(chunk)
        with contextlib.suppress(Exception):  # a malformed form is Gradio's to refuse
            self._parser.write(chunk)
        if self.parts > 1:
            self.cut = "several files"
        elif not self.arrived(self.received):
            self.cut = "cut off"


class _Watched:
    """A response passed on as it goes, its status and (when short) its body kept."""

    def __init__(self, send, keep: int = 2**16) -> None:
        self._send, self._keep = send, keep
        self.status, self.headers, self.body, self.complete = None, {}, b"", False

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], dict(message.get("headers", []))
        elif message["type"] == "http.response.body":
            if len(self.body) < self._keep:
                self.body += message.get("body", b"")
            self.complete = not message.get("more_body", False)
        elif message["type"] == "http.response.pathsend":  # a file sent whole by the server
            self.complete = True
        await self._send(message)


class UploadLimit:
    """An upload (POST …/upload) carries one file of at most `max_request_bytes` (with its form), says its size
    (Content-Length) and is charged to `disk` at that size before a byte is stored (507 when no room can be made);
    it is cut off when it stalls for `stall_seconds` (408), when a second file begins (413) or past its size (413),
    and the temporary file of an upload that stored nothing is removed. Gradio's screen-recording route, which this
    app does not use and which would store files outside any cap, is refused."""

    CUT = {"stalled": (408, "the upload stalled: send it again"),
           "several files": (413, "one upload request may carry one file"),
           "cut off": (507, "the upload was cut off to make room for visitors holding less (or ran past its "
                               "Content-Length): try again later")}

    def __init__(self, app, *, max_request_bytes: int, disk: Disk, folder: Path, stall_seconds: float = 30.0) -> None:
        self.app, self.max_request_bytes, self.disk = app, max_request_bytes, disk
        self.folder, self.stall_seconds = Path(folder), stall_seconds

    async def __call__(self, scope, receive, send):
        route = _post_to(scope)
        if route == "process_recording":
            await answer(send, 404, "this app takes no screen recordings")
        elif route != "upload":
            await self.app(scope, receive, send)
        elif refusal := self._refusal(dict(scope["headers"])):
            await answer(send, *refusal)
        else:
            await self._upload(scope, receive, send)

    def _refusal(self, headers: dict) -> tuple[int, str] | None:
        length = headers.get(b"content-length")
        if length is None:
            return 411, "an upload must say its size (Content-Length)"
        if not length.isdigit() or int(length) > self.max_request_bytes:
            limit_mb = (self.max_request_bytes - MULTIPART_OVERHEAD) / 2**20
            return 413, f"one upload request may carry one file of at most {limit_mb:g} MB"
        if not _boundary(headers):
            return 400, "an upload is a multipart form (multipart/form-data with a boundary)"
        return None

    async def _upload(self, scope, receive, send) -> None:
        headers = dict(scope["headers"])
        length = int(headers[b"content-length"])
        if self.disk.stale():
            await anyio.to_thread.run_sync(self.disk.measure)
        ticket = self.disk.admit(_visitor(scope), length)
        if ticket is None:
            await answer(send, 507, "the server's space for uploads is full: try again in a few minutes")
            return
        before = temporaries(self.folder)
        arrived = functools.partial(self.disk.progress, ticket)
        body, response = _UploadBody(receive, _boundary(headers), arrived, self.stall_seconds), _Watched(send)
        try:
            await self.app(scope, body.receive, response.send)
        except Exception:
            if not (body.cut or body.gone):
                self._abandon(ticket, before, body)
                raise
        if body.cut is None and response.status == 200 and response.complete:
            self.disk.stored(ticket, _paths(response.body))
            return
        self._abandon(ticket, before, body)
        if body.cut is not None and response.status is None:
            await answer(send, *self.CUT[body.cut])

    def _abandon(self, ticket: int, before: set[str], body: _UploadBody) -> None:
        """Remove the temporary file of an upload that stored nothing (the new one that begins with its first bytes,
        once Gradio's parser has let go of it), then free its reservation."""
        started, loop = temporaries(self.folder) - before, asyncio.get_running_loop()

        def clean_up(tries: int) -> None:
            if remove_left_behind(self.folder, started, body.begins) and tries:
                loop.call_later(0.5, clean_up, tries - 1)
            else:
                self.disk.release(ticket)

        clean_up(tries=60)


def _boundary(headers: dict) -> bytes | None:
    kind, options = parse_options_header(headers.get(b"content-type", b""))
    return options.get(b"boundary") if kind == b"multipart/form-data" else None


def _paths(body: bytes) -> list[str]:
    with contextlib.suppress(ValueError):
        paths = json.loads(body)
        if isinstance(paths, list):
            return [p for p in paths if isinstance(p, str)]
    return []


def _starts_event(scope) -> bool:
    """A POST that starts an event: …/queue/join, or the REST API's …/call/<api>."""
    if _post_to(scope) is None:
        return False
    path = scope["path"].rstrip("/")
    return path.endswith("/queue/join") or "/call/" in path


class Joins:
    """Reads the JSON body of a request that starts an event (at most `max_body_bytes`: 413 beyond) before the app
    does: a `fn_index` the app does not have is refused (422, one line) instead of failing inside Gradio (500), and
    `used(path, session)` hears which uploaded files the event uses."""

    def __init__(self, app, *, known: Callable[[object], bool], used: Callable[[str, str | None], None],
                 max_body_bytes: int = MAX_EVENT_BODY) -> None:
        self.app, self.known, self.used, self.max_body_bytes = app, known, used, max_body_bytes

    async def __call__(self, scope, receive, send):
        if not _starts_event(scope):
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
            if size > self.max_body_bytes:
                await answer(send, 413, f"an event's values may take at most {self.max_body_bytes // 2**20} MB")
                return
        body = b"".join(chunks)
        refusal = self._refusal(scope, body)
        if refusal:
            await answer(send, 422, refusal)
        else:
            await self.app(scope, _replayed(body, receive), send)

    def _refusal(self, scope, body: bytes) -> str | None:
        try:
            payload = json.loads(body)
        except ValueError:
            return None  # Gradio refuses it (422)
        if not isinstance(payload, dict):
            return None
        if scope["path"].rstrip("/").endswith("/queue/join") and not self.known(payload.get("fn_index")):
            return f"fn_index: this app has no event {quoted(payload.get('fn_index'))}"
        session = payload.get("session_hash")
        for path in _file_paths(payload.get("data")):
            self.used(path, session if isinstance(session, str) else None)
        return None


def _file_paths(value, depth: int = 3) -> Iterator[str]:
    """The `path` of every file value ({"path": …}) in an event's data."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            yield value["path"]
        values = value.values()
    elif isinstance(value, list):
        values = value
    else:
        return
    if depth:
        for inner in list(values)[:64]:
            yield from _file_paths(inner, depth - 1)


def _replayed(body: bytes, receive):
    """`receive` for the app: the body already read, then whatever the client sends next (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


class Sessions:
    """Watches Gradio's heartbeat streams (GET …/heartbeat/<session>, held open by the page and by gradio_client): a
    session whose streams have all closed and not come back within `grace_seconds` has ended, and `ended(session)`
    runs (its uploads and exports go)."""

    def __init__(self, app, *, ended: Callable[[str], None], grace_seconds: float = 30.0) -> None:
        self.app, self.ended, self.grace_seconds = app, ended, grace_seconds
        self._open: Counter[str] = Counter()

    async def __call__(self, scope, receive, send):
        session = _heartbeat_of(scope)
        if session is None:
            await self.app(scope, receive, send)
            return
        self._open[session] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._open[session] -= 1
            if self._open[session] <= 0:
                del self._open[session]
                asyncio.get_running_loop().call_later(self.grace_seconds, self._maybe_ended, session)

    def _maybe_ended(self, session: str) -> None:
        if session not in self._open:
            self.ended(session)


def _heartbeat_of(scope) -> str | None:
    if scope["type"] != "http" or scope["method"] != "GET" or "/heartbeat/" not in scope["path"]:
        return None
    return scope["path"].rstrip("/").rsplit("/heartbeat/", 1)[1] or None


ARRIVAL_HEADER = b"x-merge-lab-arrival"


class Arrivals:
    """Stamps every request that starts an event (…/queue/join, …/call/<api>) with `number()` (the order it reached
    the server) in an `x-merge-lab-arrival` header, which its handler reads (`gr.Request.headers`): a person's newest
    release is then the last to arrive, whichever thread starts first. A client's own header of that name is dropped."""

    def __init__(self, app, *, number: Callable[[], int]) -> None:
        self.app, self.number = app, number

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != ARRIVAL_HEADER]
            if _starts_event(scope):
                headers.append((ARRIVAL_HEADER, str(self.number()).encode()))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


class DownloadOnce:
    """An export is served once: a GET of it by either file route (…/file=<path> or …/file/<path>) that sends its
    last byte, whole (200) or as the end of a range (206, `Range: bytes=0-` included), removes it; a GET while such a
    download runs, or after it, is answered 410. A range that ends earlier, a HEAD, or a download broken off leave it
    for the next GET (a browser resuming). Several ranges at once get the whole zip."""

    GONE = "this download has been served (one download per build): build it again"

    def __init__(self, app, *, exports: Callable[[], ExportFolder]) -> None:
        self.app, self.exports = app, exports
        self._sending: set[Path] = set()

    async def __call__(self, scope, receive, send):
        path = _file_route_path(scope)
        export = None if path is None else self.exports().export_of(path)
        if export is None:
            await self.app(scope, receive, send)
            return
        if export in self._sending or not Path(os.path.abspath(path)).is_file():
            await answer(send, 410, self.GONE)
            return
        self._sending.add(export)
        response = _Watched(send, keep=0)
        try:
            await self.app({**scope, "headers": _one_range_at_most(scope["headers"])}, receive, response.send)
        finally:
            self._sending.discard(export)
            if response.complete and _sent_the_end(response):
                self.exports().discard(export)


def _one_range_at_most(headers: list) -> list:
    """The request's headers, its Range dropped when it asks for several ranges (a multipart answer names no end)."""
    several = any(k.lower() == b"range" and b"," in v for k, v in headers)
    return [(k, v) for k, v in headers if not (several and k.lower() in (b"range", b"if-range"))]


def _sent_the_end(response: _Watched) -> bool:
    """Whether the response carried the file's last byte: the whole file, or a range up to its end."""
    if response.status == 200:
        return True
    if response.status != 206:
        return False
    span = response.headers.get(b"content-range", b"").decode(errors="replace")  # "bytes 0-99/1234"
    try:
        last, size = span.split(" ", 1)[1].split("-", 1)[1].split("/", 1)
        return int(last) == int(size) - 1
    except (IndexError, ValueError):
        return False


def _file_route_path(scope) -> str | None:
    """The server path a GET of one of Gradio's file routes (…/file=<path>, …/file/<path>) asks for, or None."""
    if scope["type"] != "http" or scope["method"] != "GET":
        return None
    found = [(scope["path"].find(marker), marker) for marker in ("/file=", "/file/")]
    found = [(at, marker) for at, marker in found if at >= 0]
    if not found:
        return None
    at, marker = min(found)
    return scope["path"][at + len(marker):]  # ASGI paths arrive percent-decoded


# housekeeping


def housekeeping(disk: Disk, exports: Callable[[], ExportFolder], older_than: float):
    """A lifespan for the app (`app_kwargs={"lifespan": …}`): now and then, idle uploads and exports unfetched for
    `older_than` seconds go and the disk is measured again; when the server stops, every export goes."""
    period = max(0.25, min(30.0, older_than / 4))

    def sweep() -> None:
        disk.sweep()
        exports().sweep(older_than)
        disk.measure()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def every_period():
            while True:
                await asyncio.sleep(period)
                await anyio.to_thread.run_sync(sweep)

        task = asyncio.create_task(every_period())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            exports().clear()

    return lifespan


_served: weakref.WeakSet = weakref.WeakSet()  # apps to close on SIGTERM


def close_on_sigterm(demo) -> None:
    """SIGTERM closes `demo` (its lifespan removes every export; Gradio deletes its files) before the process
    ends. Only the main thread can install the handler; elsewhere this does nothing."""
    _served.add(demo)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, "closes_served_apps", False):
        return

    def terminate(signum, frame):
        for served in list(_served):
            served.close()
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    terminate.closes_served_apps = True
    signal.signal(signal.SIGTERM, terminate)


def app_kwargs(demo, lab, *, arrival: Callable[[], int], limits: CrowdLimits) -> dict:
    """`Blocks.launch`'s app_kwargs: the middlewares, outermost first, and the housekeeping lifespan."""
    from starlette.middleware import Middleware

    max_request = lab.config.max_upload_bytes + MULTIPART_OVERHEAD
    uploads_cap = lab.config.files_bytes - (lab.exports.max_bytes or 0)  # exports have their own part of the cap
    disk = Disk(uploads_cap, files=gradio_files(demo, lambda: lab.exports), forget=forget_in(demo),
                share=max(int(limits.upload_share * uploads_cap), max_request), idle_seconds=limits.idle_seconds)

    def ended(session: str) -> None:
        disk.end_session(session)
        lab.exports.release(session)

    middleware = [
        Middleware(Sessions, ended=ended, grace_seconds=limits.session_grace_seconds),
        Middleware(Joins, known=lambda fn_index: type(fn_index) is int and fn_index in demo.fns, used=disk.used),
        Middleware(Arrivals, number=arrival),
        Middleware(UploadLimit, max_request_bytes=max_request, disk=disk,
                   folder=Path(demo.GRADIO_CACHE), stall_seconds=limits.stall_seconds),
        Middleware(DownloadOnce, exports=lambda: lab.exports),
    ]
    return {"middleware": middleware, "lifespan": housekeeping(disk, lambda: lab.exports, limits.idle_seconds)}

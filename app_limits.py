"""ASGI middlewares of the app: limits on what a client can make the server store (one upload request carries at
most one file's worth of bytes, uploads wait while the app's files on disk are over the cap, an exported zip is
removed as soon as it has been downloaded whole), and the order in which requests arrived."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from merging.service.exports import folder_bytes

MULTIPART_OVERHEAD = 64 * 2**10  # form boundaries and headers around the one file


class UploadLimit:
    """Refuses an upload request (POST …/upload) without a Content-Length (411), with more bytes than one file
    may have (413), or while `disk_bytes()` stays over `max_disk_bytes` after `make_room()` (507)."""

    def __init__(self, app, *, max_request_bytes: int, max_disk_bytes: int, folder: Path,
                 make_room: Callable[[], None] = lambda: None) -> None:
        self.app, self.max_request_bytes, self.max_disk_bytes = app, max_request_bytes, max_disk_bytes
        self.folder, self.make_room = Path(folder), make_room
        self._measured = (0.0, 0)  # (when, bytes): the folder is measured at most once a second

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/upload"):
            refusal = self._refusal(dict(scope["headers"]).get(b"content-length"))
            if refusal:
                status, message = refusal
                body = json.dumps({"detail": message}).encode()
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _refusal(self, length: bytes | None) -> tuple[int, str] | None:
        limit_mb = (self.max_request_bytes - MULTIPART_OVERHEAD) / 2**20
        if length is None:
            return 411, "an upload must say its size (Content-Length)"
        if not length.isdigit() or int(length) > self.max_request_bytes:
            return 413, f"one upload request may carry one file of at most {limit_mb:g} MB"
        if self._disk_bytes() + int(length) > self.max_disk_bytes:
            self.make_room()
            self._measured = (0.0, 0)
            if self._disk_bytes() + int(length) > self.max_disk_bytes:
                return 507, "the server's space for uploads is full: try again later"
        return None

    def _disk_bytes(self) -> int:
        when, size = self._measured
        if time.monotonic() - when > 1:
            self._measured = (time.monotonic(), folder_bytes(self.folder))
        return self._measured[1]


ARRIVAL_HEADER = b"x-merge-lab-arrival"


class Arrivals:
    """Stamps every request that joins Gradio's queue with `number()` (the order it reached the server) in an
    `x-merge-lab-arrival` header, which its handler reads (`gr.Request.headers`): a person's newest release is
    then the last to arrive, whichever thread starts first. A client's own header of that name is dropped."""

    def __init__(self, app, *, number: Callable[[], int]) -> None:
        self.app, self.number = app, number

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != ARRIVAL_HEADER]
            if scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/queue/join"):
                headers.append((ARRIVAL_HEADER, str(self.number()).encode()))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


class DownloadOnce:
    """Removes an export (`discard(path)` of the folder `exports()` names) once a GET of it has been answered 200 to
    its last byte: a zip is built for one download, so it does not wait for the cap or the hourly clean-up. A
    HEAD, a range (206) or a download broken off leaves it in place."""

    def __init__(self, app, *, exports: Callable[[], object]) -> None:
        self.app, self.exports = app, exports

    async def __call__(self, scope, receive, send):
        path = _file_route_path(scope)
        if path is None:
            await self.app(scope, receive, send)
            return
        status = None

        async def watched(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            whole = message["type"] == "http.response.pathsend" or (
                message["type"] == "http.response.body" and not message.get("more_body", False))
            if whole and status == 200:
                self.exports().discard(path)

        await self.app(scope, receive, watched)


def _file_route_path(scope) -> Path | None:
    """The server path a GET of Gradio's file route (…/file=<path>) asks for, or None for any other request."""
    if scope["type"] != "http" or scope["method"] != "GET" or "/file=" not in scope["path"]:
        return None
    return Path(scope["path"].split("/file=", 1)[1])  # ASGI paths arrive percent-decoded

"""Serving Django's synchronous views from the ASGI server with one thread hop per request.

The request body is read on the event loop, the WSGI application then runs whole in a worker
thread, and a complete response comes back to the loop in the same hop. A streamed response (an
export, a file) is produced on a thread of its own, a batch at a time, and stops when the client
goes away. Compared with a general ASGI-to-WSGI adapter, which crosses between the loop and
a thread for every body read and every piece of the response, this halves what a small API request
costs the server.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

# No request body larger than this is read, whatever `body_limit` allows.
MAX_BODY_BYTES = 32 * 1024 * 1024
# A streamed response is sent in pieces of at least this many bytes (or when its iterator ends).
STREAM_BATCH_BYTES = 64 * 1024

Headers = list[tuple[bytes, bytes]]


class WsgiBridge:
    def __init__(
        self,
        app: Callable,
        *,
        threads: int,
        release: Callable[[], None] | None = None,
        body_limit: Callable[[dict], int] | None = None,
    ) -> None:
        """`release` frees what a thread holds (the asgi module passes Django's
        connections.close_all). A streamed response calls it twice: where its view ran, once the
        view returned, and last on the response's own thread, which ends then. `body_limit` gives
        the largest body a request (its scope) may send; a larger one is refused with 413, from
        its Content-Length before a byte of it is read, or once a body without one goes past it."""
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")
        self.release = release
        self.body_limit = body_limit

    async def __call__(self, scope, receive, send) -> None:
        limit = MAX_BODY_BYTES if self.body_limit is None else min(MAX_BODY_BYTES, self.body_limit(scope))
        body = await read_request_body(scope, receive, send, limit)
        if body is None:
            return
        loop = asyncio.get_running_loop()
        environ = wsgi_environ(scope, body)
        status, headers, content, result = await loop.run_in_executor(self.executor, self.run, environ)
        if result is None:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return
        await self.send_stream(loop, receive, send, status, headers, result)

    def run(self, environ: dict) -> tuple[int, Headers, bytes, Iterable[bytes] | None]:
        """Call the application in a worker thread. A complete response is joined and closed here;
        a streamed one (Django's `streaming`) is returned unread, for send_stream."""
        started: list = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
            if exc_info and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return _no_write

        result = self.app(environ, start_response)
        status, headers = started
        if getattr(result, "streaming", False):
            # The view is done with this thread; its response goes on on a thread of its own.
            if self.release is not None:
                self.release()
            return int(status[:3]), encode_headers(headers), b"", result
        try:
            content = b"".join(result)
        finally:
            _close(result)
        return int(status[:3]), encode_headers(headers), content, None

    @staticmethod
    def next_batch(stream: Iterator[bytes]) -> tuple[bytes, bool]:
        """Up to STREAM_BATCH_BYTES from the iterator, and whether more may follow."""
        parts: list[bytes] = []
        size = 0
        for chunk in stream:
            parts.append(chunk)
            size += len(chunk)
            if size >= STREAM_BATCH_BYTES:
                return b"".join(parts), True
        return b"".join(parts), False

    async def send_stream(self, loop, receive, send, status: int, headers: Headers, result) -> None:
        """A streamed response, produced on a thread of its own from its first line to its close()
        (what it queries stays on one database connection), while the pool's threads serve other
        requests. It is sent a batch at a time, and stops when the client goes away."""
        pump = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsgi-stream")
        stream = iter(result)
        gone = asyncio.ensure_future(receive())  # the next message after the body: a disconnect
        try:
            content, more = await loop.run_in_executor(pump, self.next_batch, stream)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            while more and not gone.done():
                await send({"type": "http.response.body", "body": content, "more_body": True})
                content, more = await loop.run_in_executor(pump, self.next_batch, stream)
            if not gone.done():
                await send({"type": "http.response.body", "body": content})
        finally:
            gone.cancel()
            await loop.run_in_executor(pump, self.finish_stream, result)
            pump.shutdown(wait=False)

    def finish_stream(self, result) -> None:
        try:
            _close(result)
        finally:
            if self.release is not None:
                self.release()


_DISCONNECTED = object()


def content_length(scope: dict) -> int | None:
    """The request's Content-Length (the server has checked it is a number), if it has one."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value)
    return None


async def read_body(receive, limit: int) -> bytes | object | None:
    """The whole request body; None if it is longer than `limit`, _DISCONNECTED if the client
    left."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _DISCONNECTED
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts) if len(parts) != 1 else parts[0]


async def read_request_body(scope: dict, receive, send, limit: int) -> bytes | None:
    """The whole request body; None once a body over `limit` was refused with 413 (from its
    Content-Length before a byte is read, or as soon as one without a length goes past), or if the
    client left."""
    declared = content_length(scope)
    body = None if declared is not None and declared > limit else await read_body(receive, limit)
    if body is None:
        # The rest of the body is never read: the connection closes after this answer.
        await send_plain(send, 413, b"Request body too large.\n", close=True)
        return None
    return None if body is _DISCONNECTED else body


async def read_ahead(scope: dict, receive, send, limit: int):
    """For an application that reads the body itself (Django's ASGI handler spools it whole): the
    body read here first, within `limit`, and a `receive` that hands it on, then whatever
    follows; None if the request was refused or the client left."""
    body = await read_request_body(scope, receive, send, limit)
    if body is None:
        return None
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_again() -> dict:
        return pending.pop() if pending else await receive()

    return receive_again


def wsgi_environ(scope: dict, body: bytes) -> dict:
    """The WSGI environ of an ASGI HTTP request (PEP 3333: text values carry latin-1 bytes)."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]) if server[1] is not None else "80",
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if client:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = f"HTTP_{name}"
        value = raw_value.decode("latin-1")
        environ[name] = f"{environ[name]},{value}" if name in environ else value
    if body and "CONTENT_LENGTH" not in environ:
        # A chunked body, read whole by now: Django reads a body only as long as Content-Length.
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def encode_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def send_plain(send, status: int, text: bytes, *, close: bool = False) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(text)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


def _close(result) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _no_write(data: bytes) -> None:
    raise NotImplementedError("the write() callable of start_response is not supported")

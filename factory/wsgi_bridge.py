"""Serving Django's synchronous views from the ASGI server with one thread hop per request.

The request body is read on the event loop, the WSGI application then runs whole in a worker
thread, and a complete response comes back to the loop in the same hop. A streamed response (an
export, a file) is pulled from its iterator in the thread a batch at a time and stops when the
client goes away. Compared with a general ASGI-to-WSGI adapter, which crosses between the loop and
a thread for every body read and every piece of the response, this halves what a small API request
costs the server.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

# A request body larger than this is refused (Django itself refuses far smaller form bodies).
MAX_BODY_BYTES = 32 * 1024 * 1024
# A streamed response is sent in pieces of at least this many bytes (or when its iterator ends).
STREAM_BATCH_BYTES = 64 * 1024

Headers = list[tuple[bytes, bytes]]


class WsgiBridge:
    def __init__(self, app: Callable, *, threads: int) -> None:
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")

    async def __call__(self, scope, receive, send) -> None:
        body = await read_body(receive)
        if body is None:
            await send_plain(send, 413, b"Request body too large.\n")
            return
        if body is _DISCONNECTED:
            return
        loop = asyncio.get_running_loop()
        environ = wsgi_environ(scope, body)
        status, headers, chunks, stream = await loop.run_in_executor(self.executor, self.run, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if stream is None:
            await send({"type": "http.response.body", "body": chunks})
            return
        await self.send_stream(loop, receive, send, chunks, stream)

    def run(self, environ: dict) -> tuple[int, Headers, bytes, Iterator[bytes] | None]:
        """Call the application in a worker thread. A complete response is joined and closed here;
        a streamed one returns its first batch and the iterator for the rest."""
        started: list = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
            if exc_info and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return _no_write

        result = self.app(environ, start_response)
        try:
            if getattr(result, "streaming", False):
                chunks, stream = self.next_batch(iter(result))
            else:
                chunks, stream = b"".join(result), None
        except BaseException:
            _close(result)
            raise
        if stream is None:
            _close(result)
        else:
            stream = _Closing(stream, result)
        status, headers = started
        return int(status[:3]), encode_headers(headers), chunks, stream

    @staticmethod
    def next_batch(stream: Iterator[bytes]) -> tuple[bytes, Iterator[bytes] | None]:
        """Up to STREAM_BATCH_BYTES from the iterator; None for the iterator once it is spent."""
        parts: list[bytes] = []
        size = 0
        for chunk in stream:
            parts.append(chunk)
            size += len(chunk)
            if size >= STREAM_BATCH_BYTES:
                return b"".join(parts), stream
        return b"".join(parts), None

    async def send_stream(self, loop, receive, send, chunks: bytes, stream: _Closing) -> None:
        gone = asyncio.ensure_future(receive())  # the next message after the body: a disconnect
        try:
            rest: Iterator[bytes] | None = stream
            while rest is not None and not gone.done():
                await send({"type": "http.response.body", "body": chunks, "more_body": True})
                chunks, rest = await loop.run_in_executor(self.executor, self.next_batch, stream)
            if not gone.done():
                await send({"type": "http.response.body", "body": chunks})
        finally:
            gone.cancel()
            await loop.run_in_executor(self.executor, stream.close)


_DISCONNECTED = object()


async def read_body(receive) -> bytes | object | None:
    """The whole request body; None if it is too large, _DISCONNECTED if the client left."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _DISCONNECTED
        part = message.get("body", b"")
        size += len(part)
        if size > MAX_BODY_BYTES:
            return None
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts) if len(parts) != 1 else parts[0]


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
    return environ


def encode_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def send_plain(send, status: int, text: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(text)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


class _Closing:
    """A response iterator whose close() also closes the WSGI result (Django's request_finished:
    the database connection goes back to its pool)."""

    def __init__(self, stream: Iterator[bytes], result) -> None:
        self.stream = stream
        self.result = result

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        return next(self.stream)

    def close(self) -> None:
        _close(self.result)


def _close(result) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _no_write(data: bytes) -> None:
    raise NotImplementedError("the write() callable of start_response is not supported")

"""The bridge that serves Django's synchronous views from the ASGI server, driven as a server
drives it: ASGI messages in, ASGI messages out, the application running in the bridge's threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from factory import wsgi_bridge
from factory.wsgi_bridge import WsgiBridge


def scope(path="/api/v1/jobs/", method="POST", query=b"", headers=()):
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "root_path": "",
        "query_string": query,
        "headers": list(headers),
        "server": ("portal.example", 443),
        "client": ("10.0.0.7", 51234),
    }


def run(bridge, request_scope, messages, *, stop_after=None):
    """Serve one request; returns what was sent. `messages` are what receive() gives, after which
    it waits (as a connected client does); `stop_after` = number of body messages after which the
    client disconnects."""
    sent: list[dict] = []

    async def main():
        queue: asyncio.Queue = asyncio.Queue()
        for message in messages:
            queue.put_nowait(message)

        async def receive():
            return await queue.get()

        async def send(message):
            sent.append(message)
            bodies = sum(m["type"] == "http.response.body" for m in sent)
            if message["type"] == "http.response.body" and bodies == stop_after:
                queue.put_nowait({"type": "http.disconnect"})
                await asyncio.sleep(0.05)  # the server notices the disconnect

        await bridge(request_scope, receive, send)

    asyncio.run(main())
    return sent


def body_of(sent):
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_request_reaches_the_application_as_pep_3333_says_and_its_response_comes_back_whole():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        seen["body"] = environ["wsgi.input"].read()
        seen["thread"] = threading.current_thread().name
        start_response("202 Accepted", [("Content-Type", "application/json"), ("Location", "/jobs/1/")])
        return [b'{"id":', b" 1}"]

    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"15"),
        (b"authorization", b"Token abc"),
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2"),
    ]
    messages = [
        {"type": "http.request", "body": b'{"name":', "more_body": True},
        {"type": "http.request", "body": b' "x"}', "more_body": False},
    ]
    sent = run(
        WsgiBridge(app, threads=2), scope("/jobs/ü/", query=b"a=1&b=%C3%BC", headers=headers), messages
    )

    assert sent[0] == {
        "type": "http.response.start",
        "status": 202,
        "headers": [(b"content-type", b"application/json"), (b"location", b"/jobs/1/")],
    }
    assert sent[1:] == [{"type": "http.response.body", "body": b'{"id": 1}'}]
    assert seen["body"] == b'{"name": "x"}'
    assert seen["thread"].startswith("wsgi")
    assert seen["REQUEST_METHOD"] == "POST"
    assert seen["PATH_INFO"] == "/jobs/ü/".encode().decode("latin-1")
    assert seen["QUERY_STRING"] == "a=1&b=%C3%BC"
    assert (seen["CONTENT_TYPE"], seen["CONTENT_LENGTH"]) == ("application/json", "15")
    assert seen["HTTP_AUTHORIZATION"] == "Token abc"
    assert seen["HTTP_X_FORWARDED_FOR"] == "1.1.1.1,2.2.2.2"
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"], seen["wsgi.url_scheme"]) == (
        "portal.example",
        "443",
        "https",
    )
    assert (seen["REMOTE_ADDR"], seen["SERVER_PROTOCOL"]) == ("10.0.0.7", "HTTP/1.1")


class Streamed:
    """A streamed WSGI result, as Django's StreamingHttpResponse is one: `streaming`, and close()."""

    streaming = True

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size = count, size
        self.produced = 0
        self.closed = threading.Event()
        self.threads: set[str] = set()

    def __iter__(self):
        for _ in range(self.count):
            self.threads.add(threading.current_thread().name)
            self.produced += 1
            yield b"x" * self.size

    def close(self):
        self.threads.add(threading.current_thread().name)
        self.closed.set()


def streaming_app(result: Streamed):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/csv")])
        return result

    return app


def test_a_streamed_response_is_sent_in_batches_from_one_thread_and_closed(monkeypatch):
    monkeypatch.setattr(wsgi_bridge, "STREAM_BATCH_BYTES", 1000)
    result = Streamed(count=25, size=100)
    released = []
    bridge = WsgiBridge(
        streaming_app(result), threads=2, release=lambda: released.append(threading.current_thread().name)
    )
    sent = run(bridge, scope(method="GET"), [{"type": "http.request"}])
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert body_of(sent) == b"x" * 2500
    assert [len(m["body"]) for m in bodies] == [1000, 1000, 500]
    assert [m.get("more_body", False) for m in bodies] == [True, True, False]
    assert result.closed.is_set()
    # Produced and closed on one thread of its own (its queries stay on one connection).
    assert len(result.threads) == 1 and result.threads.pop().startswith("wsgi-stream")
    view_thread, stream_thread = released  # where the view ran, then the response's own thread
    assert view_thread.startswith("wsgi_") and stream_thread.startswith("wsgi-stream")


def test_a_streamed_response_stops_when_the_client_goes_away(monkeypatch):
    monkeypatch.setattr(wsgi_bridge, "STREAM_BATCH_BYTES", 1000)
    result = Streamed(count=10_000, size=100)
    sent = run(
        WsgiBridge(streaming_app(result), threads=2),
        scope(method="GET"),
        [{"type": "http.request"}],
        stop_after=2,
    )
    assert len([m for m in sent if m["type"] == "http.response.body"]) <= 3
    assert result.produced < 100  # the export was not produced to its end for nobody
    assert result.closed.is_set()


def test_a_short_response_from_a_streaming_result_is_sent_in_one_piece():
    result = Streamed(count=3, size=10)
    sent = run(WsgiBridge(streaming_app(result), threads=2), scope(method="GET"), [{"type": "http.request"}])
    assert sent[1:] == [{"type": "http.response.body", "body": b"x" * 30}]
    assert result.closed.is_set()


def test_a_body_over_the_limit_is_refused_without_calling_the_application(monkeypatch):
    monkeypatch.setattr(wsgi_bridge, "MAX_BODY_BYTES", 10)
    called = []

    def app(environ, start_response):
        called.append(True)
        start_response("200 OK", [])
        return [b""]

    messages = [
        {"type": "http.request", "body": b"x" * 8, "more_body": True},
        {"type": "http.request", "body": b"x" * 8, "more_body": False},
    ]
    sent = run(WsgiBridge(app, threads=1), scope(), messages)
    assert sent[0]["status"] == 413 and not called


def test_a_client_gone_before_its_body_arrived_gets_nothing():
    called = []

    def app(environ, start_response):
        called.append(True)
        return []

    sent = run(WsgiBridge(app, threads=1), scope(), [{"type": "http.disconnect"}])
    assert sent == [] and not called


def test_the_result_is_closed_when_the_application_fails_while_producing_it():
    class Failing:
        closed = False

        def __iter__(self):
            raise RuntimeError("boom")

        def close(self):
            Failing.closed = True

    def app(environ, start_response):
        start_response("200 OK", [])
        return Failing()

    with pytest.raises(RuntimeError, match="boom"):
        run(WsgiBridge(app, threads=1), scope(method="GET"), [{"type": "http.request"}])
    assert Failing.closed


def test_a_streamed_response_that_fails_at_once_sends_nothing_and_is_closed():
    class Broken(Streamed):
        def __iter__(self):
            raise RuntimeError("no data")
            yield b""

    result = Broken(count=1, size=1)
    with pytest.raises(RuntimeError, match="no data"):
        run(WsgiBridge(streaming_app(result), threads=1), scope(method="GET"), [{"type": "http.request"}])
    assert result.closed.is_set()


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read():
    called = []

    def app(environ, start_response):
        called.append(True)
        start_response("200 OK", [])
        return [b""]

    sent: list[dict] = []

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    headers = [(b"content-length", b"1000")]
    bridge = WsgiBridge(app, threads=1, body_limit=lambda scope: 999)
    asyncio.run(bridge(scope(headers=headers), receive, send))
    assert sent[0]["status"] == 413 and not called
    assert (b"connection", b"close") in sent[0]["headers"]


def test_a_body_without_a_length_is_read_up_to_the_limit_only():
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    messages = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 2
    sent = run(WsgiBridge(app, threads=1, body_limit=lambda scope: 1000), scope(), messages)
    assert sent[0]["status"] == 413


def test_a_body_without_a_length_reaches_the_application_with_its_length():
    seen = {}

    def app(environ, start_response):
        seen["length"] = environ["CONTENT_LENGTH"]
        seen["body"] = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b""]

    messages = [
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b" 1}", "more_body": False},
    ]
    headers = [(b"transfer-encoding", b"chunked")]
    run(WsgiBridge(app, threads=1, body_limit=lambda scope: 1000), scope(headers=headers), messages)
    assert seen == {"length": "8", "body": b'{"a": 1}'}

"""ASGI entry point: the live event streams, served by uvicorn (`events` in the topology).

In production the proxy sends only the stream paths here (deploy/nginx/factory.conf.template);
pages and the API go to gunicorn (factory.wsgi). Served alone (`make run`), this one process
answers everything: the streams through StreamHandler, every other request through Django's own
ASGI handler.

A stream holds no thread while it is open: see StreamHandler, and jobs/live.py for its database
reads.
"""

from __future__ import annotations

import re

from django.core.handlers.asgi import ASGIHandler

from factory.preflight import start_or_exit

STREAM_PATHS = re.compile(r"^/jobs/\d+/stream/$")


class StreamHandler(ASGIHandler):
    """Django's ASGI handler without a thread of its own for each request.

    ASGIHandler serves each request in a ThreadSensitiveContext: the request's first synchronous
    step (the request_started signal, a middleware, the session lookup) starts a thread for it,
    which lives until the response ends; an open event stream would keep it for hours. Outside
    such a context asgiref runs those steps on one thread per process, shared by every stream. They
    are short, and the streams' own reads run on jobs.live's few shared threads."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)


start_or_exit()
streams = StreamHandler()
pages_and_api = ASGIHandler()


async def application(scope, receive, send):
    if scope["type"] == "http" and STREAM_PATHS.match(scope["path"]):
        await streams(scope, receive, send)
    else:
        await pages_and_api(scope, receive, send)

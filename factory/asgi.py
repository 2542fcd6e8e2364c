"""ASGI entry point.

Only the live event streams are asynchronous (long-lived and mostly idle). Every other request
(pages, the REST API) is ordinary synchronous Django. Under Django's ASGI handler those run one at
a time per process (sync code goes to a single thread) and hop between the event loop and that
thread at every middleware; so they go to Django's WSGI handler instead, run whole in a thread pool
where their database waits overlap, and only the stream paths take the ASGI handler.

A stream holds no thread while it is open: see StreamHandler, and jobs/live.py for its database
reads.
"""

from __future__ import annotations

import os
import re

import django
from django.core.handlers.asgi import ASGIHandler
from django.core.wsgi import get_wsgi_application
from django.db import connections

from factory.wsgi_bridge import WsgiBridge, read_ahead

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.settings")

STREAM_PATHS = re.compile(r"^/jobs/\d+/stream/$")
SYNC_THREADS = int(os.environ.get("FACTORY_SYNC_THREADS", "2"))


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


django.setup(set_prefix=False)
streams = StreamHandler()

from factory.middleware import body_limit  # noqa: E402 - needs the apps loaded above

# A request body is small without credentials, larger with them (checked by the middleware).
pages_and_api = WsgiBridge(
    get_wsgi_application(), threads=SYNC_THREADS, release=connections.close_all, body_limit=body_limit
)


async def application(scope, receive, send):
    if scope["type"] != "http":
        await streams(scope, receive, send)
    elif not STREAM_PATHS.match(scope["path"]):
        await pages_and_api(scope, receive, send)
    else:
        # Django's ASGI handler would read any body whole, before any middleware.
        receive = await read_ahead(scope, receive, send, body_limit(scope))
        if receive is not None:
            await streams(scope, receive, send)

"""ASGI entry point.

Only the live event streams are asynchronous (long-lived and mostly idle). Every other request
(pages, the REST API) is ordinary synchronous Django. Under Django's ASGI handler those run one at
a time per process (sync code goes to a single thread) and hop between the event loop and that
thread at every middleware; so they go to Django's WSGI handler instead, run whole in a thread pool
where their database waits overlap, and only the stream paths take the ASGI handler.
"""

from __future__ import annotations

import os
import re

from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.db import connections

from factory.wsgi_bridge import WsgiBridge

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.settings")

STREAM_PATHS = re.compile(r"^/jobs/\d+/stream/$")
SYNC_THREADS = int(os.environ.get("FACTORY_SYNC_THREADS", "2"))

streams = get_asgi_application()
pages_and_api = WsgiBridge(get_wsgi_application(), threads=SYNC_THREADS, release=connections.close_all)


async def application(scope, receive, send):
    if scope["type"] == "http" and not STREAM_PATHS.match(scope["path"]):
        await pages_and_api(scope, receive, send)
    else:
        await streams(scope, receive, send)

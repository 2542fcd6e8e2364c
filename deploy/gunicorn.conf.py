"""gunicorn for pages and the API (factory.wsgi), behind the proxy (deploy/nginx/).

    gunicorn -c deploy/gunicorn.conf.py

gthread workers: WEB_CONCURRENCY processes (default one per core), each with
FACTORY_SYNC_THREADS threads (default 2; a process runs Python on one core at a time, so more
threads only overlap database waits). The proxy hands a worker whole requests and takes whole
answers, so a thread is held only while Django works, and stops waiting for an answer after 60 s
(the client gets a 504). A worker process that stops answering its master (blocked, wedged) for
GUNICORN_TIMEOUT seconds is killed and replaced. Every worker is replaced after about
GUNICORN_MAX_REQUESTS requests (jittered so that they do not all restart at once).
"""

from __future__ import annotations

import os

wsgi_app = "factory.wsgi:application"
bind = [
    os.environ.get("GUNICORN_BIND", f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}")
]
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1)
threads = int(os.environ.get("FACTORY_SYNC_THREADS") or 2)
timeout = int(os.environ.get("GUNICORN_TIMEOUT") or 30)
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT") or 20)
# Idle keep-alive connections from the proxy (its upstream keepalive pool) stay this long.
keepalive = 30
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS") or 5000)
max_requests_jitter = max_requests // 10
# Request heads are small here; anything bigger is refused before Django sees it.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384
# Behind the proxy: its X-Forwarded-Proto is believed from these addresses (FORWARDED_ALLOW_IPS,
# which factory.middleware also reads for the client's address).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "warning")
# Workers start from a clean interpreter (no preload): nothing opened before the fork is shared.
preload_app = False


def on_starting(server) -> None:
    """In the master, before it listens or forks: settings that load, a database that answers;
    otherwise one line and exit status 2 (factory.preflight)."""
    from factory.preflight import start_or_exit

    start_or_exit()

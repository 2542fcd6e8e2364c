"""Django's Redis cache, confined to its key prefix and never a reason for a request to fail.

The cache may share a Redis database with the Celery broker (REDIS_URL). Django's RedisCache
clears with FLUSHDB, which would empty the broker's queues too; this one deletes only the keys
under its own prefix.

What is cached (throttle counters, the largest pool per GPU type) can be worked out or done
without, so a Redis that cannot be reached is a miss, not an error: reads return their default,
writes are dropped, and a warning is logged now and then. Job submission and sign-in go on while
Redis restarts; throttles let requests through meanwhile.
"""

from __future__ import annotations

import logging
import re
import time

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from redis import exceptions as redis_errors

log = logging.getLogger(__name__)

_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+$")
_DELETE_BATCH = 500
_UNREACHABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError)
_WARN_EVERY = 30.0  # seconds between warnings about an unreachable Redis, per process


class PrefixedRedisCache(RedisCache):
    def __init__(self, server, params) -> None:
        super().__init__(server, params)
        if not _PREFIX.match(self.key_prefix):
            raise ImproperlyConfigured(
                "The Redis cache needs a KEY_PREFIX of letters, digits, '_', '.' or '-' (CACHE_KEY_PREFIX)"
            )
        self._warned_at = -_WARN_EVERY

    def _or(self, fallback, method, *args):
        """`method(*args)`, or `fallback` if Redis cannot be reached."""
        try:
            return method(*args)
        except _UNREACHABLE as exc:
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY:
                self._warned_at = now
                log.warning("The cache's Redis cannot be reached (%s); going on without it", exc)
            return fallback

    def get(self, key, default=None, version=None):
        return self._or(default, super().get, key, default, version)

    def get_many(self, keys, version=None):
        return self._or({}, super().get_many, keys, version)

    def has_key(self, key, version=None):
        return self._or(False, super().has_key, key, version)

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._or(False, super().add, key, value, timeout, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        self._or(None, super().set, key, value, timeout, version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self._or(list(data), super().set_many, data, timeout, version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._or(False, super().touch, key, timeout, version)

    def delete(self, key, version=None):
        return self._or(False, super().delete, key, version)

    def delete_many(self, keys, version=None):
        self._or(None, super().delete_many, keys, version)

    def clear(self) -> bool:
        client = self._cache.get_client(write=True)
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{self.key_prefix}:*", count=_DELETE_BATCH):
            batch.append(key)
            if len(batch) >= _DELETE_BATCH:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
        return True

"""The shared cache may live in the Celery broker's Redis database: clearing it deletes its own
keys only."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from django.core.cache import caches

from factory.cache import PrefixedRedisCache


@pytest.mark.skipif(not settings.CACHE_URL, reason="the cache is in Redis only with REDIS_URL or CACHE_URL")
def test_clearing_the_cache_leaves_the_brokers_keys_alone():
    cache = caches["default"]
    assert isinstance(cache, PrefixedRedisCache)
    client = redis.Redis.from_url(settings.CACHE_URL)
    try:
        client.lpush("celery-test-queue", "a task")
        for number in range(1200):  # more than one batch of deletions
            cache.set(f"key-{number}", number)
        cache.clear()
        assert client.llen("celery-test-queue") == 1
        assert cache.get("key-0") is None and cache.get("key-1199") is None
        assert not list(client.scan_iter(match=f"{settings.CACHES['default']['KEY_PREFIX']}:*"))
    finally:
        client.delete("celery-test-queue")
        client.close()


UNREACHABLE = {
    "BACKEND": "factory.cache.PrefixedRedisCache",
    "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
    "KEY_PREFIX": "factory-test",
    "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
}


def test_a_redis_that_cannot_be_reached_is_a_miss_not_an_error():
    cache = PrefixedRedisCache(UNREACHABLE["LOCATION"], UNREACHABLE)
    cache.set("a", 1)
    cache.set_many({"b": 2})
    assert cache.get("a", "missing") == "missing"
    assert cache.get_many(["a", "b"]) == {}
    assert cache.add("a", 1) is False and cache.has_key("a") is False
    cache.delete("a")
    cache.delete_many(["a", "b"])


@pytest.mark.django_db
def test_signing_in_and_submitting_go_on_without_the_caches_redis(settings, owner, cluster, quotas):
    from rest_framework.test import APIClient

    from tests.conftest import job_spec

    settings.CACHES = {"default": UNREACHABLE}
    client = APIClient()
    response = client.post("/api/v1/auth/token/", {"username": "researcher", "password": "pw-researcher"})
    assert response.status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    spec = job_spec(tenant="demo-lab", gpu_type="h100")
    assert client.post("/api/v1/jobs/", spec, format="json").status_code == 202

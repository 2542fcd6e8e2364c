"""The client's address behind the proxy: taken from X-Forwarded-For only when the request comes
from a proxy in FORWARDED_ALLOW_IPS (through the real nginx in tests/integration/test_server.py)."""

from __future__ import annotations

from django.http import HttpResponse
from django.test import RequestFactory

from factory.middleware import ForwardedClientMiddleware


def client_address(remote: str, forwarded: str | None) -> str:
    seen = {}

    def view(request):
        seen["address"] = request.META["REMOTE_ADDR"]
        return HttpResponse()

    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    ForwardedClientMiddleware(view)(RequestFactory().get("/", **extra))
    return seen["address"]


def test_a_trusted_proxy_gives_the_client_address(settings):
    settings.FORWARDED_ALLOW_IPS = "127.0.0.1,10.0.0.0/8"
    assert client_address("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert client_address("10.1.2.3", "198.51.100.1, 203.0.113.9") == "203.0.113.9"  # the proxy's entry
    assert client_address("::1", "203.0.113.9") == "::1"  # not listed
    assert client_address("127.0.0.1", None) == "127.0.0.1"
    assert client_address("127.0.0.1", "not-an-address") == "127.0.0.1"


def test_a_client_cannot_choose_its_own_address(settings):
    settings.FORWARDED_ALLOW_IPS = "127.0.0.1"
    assert client_address("192.0.2.44", "127.0.0.1") == "192.0.2.44"


def test_any_peer_is_a_proxy_with_a_star(settings):
    settings.FORWARDED_ALLOW_IPS = "*"
    assert client_address("192.0.2.44", "203.0.113.9") == "203.0.113.9"

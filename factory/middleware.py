"""Who the client is behind the proxy, and how large a body it may send.

ForwardedClientMiddleware: behind the reverse proxy every request comes from the proxy's address;
the proxy puts the client's in X-Forwarded-For (replacing whatever the client sent there), and
for a request from one of FORWARDED_ALLOW_IPS that address becomes REMOTE_ADDR, which sign-in
lockouts and throttles count by. A client's own X-Forwarded-For, sent straight to a server, is
never believed.

RequestBodyLimitMiddleware: a request without credentials (no session, no valid API token) may
send FACTORY_ANONYMOUS_MAX_BODY_BYTES, enough for a sign-in form; a signed-in one
DATA_UPLOAD_MAX_MEMORY_SIZE. The proxy refuses anything over that before it reaches a server
(client_max_body_size) and hands a server only whole bodies; this middleware refuses, from
Content-Length and before anything reads the body, a larger body than the request's credentials
allow.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from rest_framework.exceptions import AuthenticationFailed

from factory.api.authentication import ApiTokenAuthentication


def signed_in(request: HttpRequest) -> bool:
    """Whether the request has a session of an active user or a valid API token (the same look-up
    the API makes next, remembered by then)."""
    if request.user.is_authenticated:
        return True
    try:
        return ApiTokenAuthentication().authenticate(request) is not None
    except AuthenticationFailed:
        return False


def too_large(limit: int, when: str = "") -> HttpResponse:
    return HttpResponse(
        f"Request body too large: at most {limit} bytes{when}.\n".encode(),
        status=413,
        content_type="text/plain; charset=utf-8",
    )


class RequestBodyLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0  # Django reads no body then
        if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        if length > settings.FACTORY_ANONYMOUS_MAX_BODY_BYTES and not signed_in(request):
            discard_body(request)
            return too_large(settings.FACTORY_ANONYMOUS_MAX_BODY_BYTES, " before signing in")
        return self.get_response(request)


def discard_body(request: HttpRequest) -> None:
    """Read a refused body to its end, keeping none of it. The proxy has it whole already (no
    larger than its limit) and is still handing it over: a server that answered and closed
    before taking it all would cut the proxy off mid-request, and the client would get a 502."""
    while request.read(64 * 1024):
        pass


@lru_cache(maxsize=1)
def trusted_proxies(spec: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    """FORWARDED_ALLOW_IPS as networks; None for `*` (every peer is a proxy)."""
    if spec.strip() == "*":
        return None
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in spec.split(",") if item.strip())


def from_trusted_proxy(address: str) -> bool:
    networks = trusted_proxies(settings.FORWARDED_ALLOW_IPS)
    if networks is None:
        return True
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(peer in network for network in networks)


class ForwardedClientMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded and from_trusted_proxy(request.META.get("REMOTE_ADDR", "")):
            # The proxy replaces the header with the address it saw: the last entry is that.
            client = forwarded.rsplit(",", 1)[-1].strip()
            with contextlib.suppress(ValueError):
                request.META["REMOTE_ADDR"] = str(ipaddress.ip_address(client))
        return self.get_response(request)

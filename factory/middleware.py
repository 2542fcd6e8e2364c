"""Request bodies: small until a client has signed in.

A request without credentials (no session, no valid API token) may send
FACTORY_ANONYMOUS_MAX_BODY_BYTES, enough for a sign-in form; a signed-in one
DATA_UPLOAD_MAX_MEMORY_SIZE. The web server refuses a body over the limit for the credentials a
request carries, from its Content-Length and before reading it (`body_limit`, used by
factory.asgi); this middleware checks that those credentials are good, before anything reads the
body.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.cookie import parse_cookie
from rest_framework.exceptions import AuthenticationFailed

from factory.api.authentication import ApiTokenAuthentication


def body_limit(scope: dict) -> int:
    """The largest body an (ASGI) request may send: the signed-in limit if it carries credentials
    (an Authorization header or a session cookie), which the middleware checks before the body is
    used."""
    session_cookie = settings.SESSION_COOKIE_NAME
    for name, value in scope.get("headers", ()):
        if name == b"authorization" or (
            name == b"cookie" and parse_cookie(value.decode("latin-1")).get(session_cookie)
        ):
            return settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return settings.FACTORY_ANONYMOUS_MAX_BODY_BYTES


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
            return too_large(settings.FACTORY_ANONYMOUS_MAX_BODY_BYTES, " before signing in")
        return self.get_response(request)

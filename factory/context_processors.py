from __future__ import annotations

from django.conf import settings


def site(request) -> dict:
    return {"site_name": settings.SITE_NAME}


def roles(request) -> dict:
    """The signed-in user's platform roles (shown beside their name) and whether the admin is theirs."""
    from . import roles as platform

    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "platform_roles": [platform.PlatformRole(role).label for role in platform.platform_roles(user)],
        "enters_admin": platform.enters_admin(user),
    }

from __future__ import annotations

from .permissions import reads_billing


def billing(request) -> dict:
    user = getattr(request, "user", None)
    return {"shows_billing": bool(user and reads_billing(user))}

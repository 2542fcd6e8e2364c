from __future__ import annotations

from .permissions import is_finance


def billing(request) -> dict:
    user = getattr(request, "user", None)
    return {"shows_billing": bool(user and is_finance(user))}

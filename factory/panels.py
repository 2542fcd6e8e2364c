"""Panels: places in a lower app's pages where apps above it add their own part (billing adds a
job's cost to the job page and spend to the tenant dashboard) without the page importing them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from django.utils.safestring import SafeString, mark_safe

_PANELS: dict[str, list[Callable[..., str]]] = defaultdict(list)


def register(slot: str, render: Callable[..., str]) -> None:
    """`render(request, **context) -> html` is called wherever a page shows the slot."""
    if render not in _PANELS[slot]:
        _PANELS[slot].append(render)


def render(slot: str, request, **context) -> SafeString:
    return mark_safe("".join(panel(request, **context) for panel in _PANELS[slot]))

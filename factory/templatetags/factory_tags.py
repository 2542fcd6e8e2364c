from __future__ import annotations

from datetime import timedelta

from django import template

register = template.Library()


@register.filter
def duration(value: timedelta | None) -> str:
    """A short human duration: 45 s, 3 min 05 s, 2 h 07 min, 3 d 4 h."""
    if value is None:
        return ""
    seconds = max(int(value.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


@register.filter
def seconds_duration(value: int | None) -> str:
    return "" if value is None else duration(timedelta(seconds=value))


@register.simple_tag(takes_context=True)
def panels(context, slot: str, **kwargs):
    from factory import panels as registry

    return registry.render(slot, context.get("request"), **kwargs)

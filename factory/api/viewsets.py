from __future__ import annotations

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.urls import URLResolver, get_resolver
from rest_framework import viewsets
from rest_framework.generics import GenericAPIView

TENANT = "tenant"
GLOBAL = "global"


class ScopedViewSetMixin:
    """The one base for API viewsets: querysets are narrowed to what the user may see, through the
    model's `visible_to` queryset method, so another tenant's object is a 404 everywhere.

    It fails closed: a viewset whose queryset has no `visible_to` is an error when its class is
    defined. Objects that belong to no tenant and that every user the permission classes let in
    may see (GPU types, clusters, prices) say so by name: `scoping = "global"`."""

    scoping = TENANT

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.scoping not in (TENANT, GLOBAL):
            raise ImproperlyConfigured(f"{cls.__qualname__}.scoping is {TENANT!r} or {GLOBAL!r}.")
        queryset = getattr(cls, "queryset", None)
        if cls.scoping == TENANT and queryset is not None and not hasattr(queryset, "visible_to"):
            raise ImproperlyConfigured(
                f"{cls.__qualname__}: {queryset.model.__name__} rows are not scoped (their queryset has "
                f"no visible_to(user)); give it one, or set scoping = {GLOBAL!r} if every user may "
                "see them all."
            )

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.scoping == GLOBAL:
            return queryset
        return queryset.visible_to(self.request.user)


class ScopedModelViewSet(ScopedViewSetMixin, viewsets.ModelViewSet):
    pass


class ScopedReadOnlyViewSet(ScopedViewSetMixin, viewsets.ReadOnlyModelViewSet):
    pass


def check_api_scoping(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Every routed view that lists or fetches rows (a DRF generic view or viewset) goes through
    the scoped base: one that bypasses it would serve every tenant's rows."""
    errors = []
    for view in sorted(_routed_generic_views(get_resolver().url_patterns), key=lambda v: v.__qualname__):
        if not issubclass(view, ScopedViewSetMixin):
            errors.append(
                checks.Error(
                    f"{view.__module__}.{view.__qualname__} is routed without tenant scoping.",
                    hint="Derive it from factory.api.viewsets.ScopedViewSetMixin (scoping = "
                    f"{GLOBAL!r} for rows every user may see).",
                    obj=view,
                    id="factory.E001",
                )
            )
    return errors


def _routed_generic_views(patterns) -> set[type]:
    views = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            views |= _routed_generic_views(pattern.url_patterns)
            continue
        view = getattr(pattern.callback, "cls", None)  # DRF's as_view() keeps the class here
        if isinstance(view, type) and issubclass(view, GenericAPIView):
            views.add(view)
    return views

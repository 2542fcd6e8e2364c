from __future__ import annotations

from rest_framework import viewsets


class ScopedViewSetMixin:
    """The one base for API viewsets: querysets are narrowed to what the user may see, through the
    model's `visible_to` queryset method, so another tenant's object is a 404 everywhere."""

    def get_queryset(self):
        queryset = super().get_queryset()
        if hasattr(queryset, "visible_to"):
            queryset = queryset.visible_to(self.request.user)
        return queryset


class ScopedModelViewSet(ScopedViewSetMixin, viewsets.ModelViewSet):
    pass


class ScopedReadOnlyViewSet(ScopedViewSetMixin, viewsets.ReadOnlyModelViewSet):
    pass

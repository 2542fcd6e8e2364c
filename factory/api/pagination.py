from __future__ import annotations

from rest_framework import pagination


class CursorPagination(pagination.CursorPagination):
    """Stable pages under concurrent inserts; a view may set `cursor_ordering`."""

    ordering = "-id"
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_ordering(self, request, queryset, view):
        return (getattr(view, "cursor_ordering", self.ordering),)

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework import viewsets
from rest_framework.routers import SimpleRouter

from factory.api.serializers import GpuTypeSerializer
from factory.api.viewsets import GLOBAL, ScopedModelViewSet, ScopedReadOnlyViewSet, check_api_scoping
from factory.models import GpuType


class AroundTheBase(viewsets.ReadOnlyModelViewSet):
    queryset = GpuType.objects.all()
    serializer_class = GpuTypeSerializer


router = SimpleRouter()
router.register("gpu-types", AroundTheBase)
urlpatterns = router.urls  # this module is the URLconf of the check's failing case


def test_a_viewset_over_rows_without_visible_to_is_an_error_when_defined():
    with pytest.raises(ImproperlyConfigured, match="GpuType rows are not scoped"):

        class Unscoped(ScopedModelViewSet):
            queryset = GpuType.objects.all()


def test_rows_every_user_may_see_are_opted_out_by_name():
    class Everyone(ScopedReadOnlyViewSet):
        scoping = GLOBAL
        queryset = GpuType.objects.all()

    with pytest.raises(ImproperlyConfigured, match="scoping is"):

        class Misspelt(ScopedReadOnlyViewSet):
            scoping = "globl"
            queryset = GpuType.objects.all()


def test_every_routed_viewset_goes_through_the_scoped_base():
    assert check_api_scoping() == []


def test_a_viewset_routed_around_the_scoped_base_fails_the_check(settings):
    settings.ROOT_URLCONF = __name__
    errors = check_api_scoping()
    assert [(e.id, e.obj) for e in errors] == [("factory.E001", AroundTheBase)]

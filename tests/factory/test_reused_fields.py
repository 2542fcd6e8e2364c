"""What ReusedFieldsMixin relies on in DRF, pinned: if an upgrade of DRF changes it, these fail
before a request does. The mixin shallow-copies prebuilt fields instead of deep-copying them per
serializer, which is sound only while binding a field to its serializer just sets a few
attributes on it."""

from __future__ import annotations

import copy

import pytest
from rest_framework import serializers

from jobs.api.serializers import JobCreateSerializer, JobSerializer

FIELDS = [*JobCreateSerializer._declared_fields.items(), *JobSerializer._declared_fields.items()]


def plain(serializer_class):
    """The same serializer without the mixin: DRF's own deep copy of every field."""
    return type(
        f"Plain{serializer_class.__name__}",
        (serializer_class,),
        {"get_fields": lambda self: copy.deepcopy(self._declared_fields)},
    )


def contents(value) -> list[int] | None:
    """What a container holds, by identity (None for anything else)."""
    if isinstance(value, dict):
        return [id(k) for k in value] + [id(v) for v in value.values()]
    if isinstance(value, (list, set)):
        return [id(item) for item in value]
    return None


@pytest.mark.parametrize(("name", "field"), FIELDS, ids=[name for name, _ in FIELDS])
def test_binding_a_field_changes_nothing_a_shallow_copy_shares(name, field):
    """A shallow copy shares the values of its attributes with the prototype: bind may set
    attributes on the copy, but must not change a shared value in place."""
    field = copy.copy(field)
    shared = {key: (value, contents(value)) for key, value in vars(field).items()}
    field.bind(name, serializers.Serializer())
    for key, (value, before) in shared.items():
        if vars(field)[key] is value:
            assert contents(value) == before, key


def test_each_serializer_gets_its_own_bound_fields():
    first, second = JobCreateSerializer(data={}), JobCreateSerializer(data={})
    for name in first.fields:
        assert first.fields[name] is not second.fields[name]
        assert first.fields[name].parent is first and second.fields[name].parent is second


@pytest.mark.django_db
@pytest.mark.parametrize(
    "data",
    [
        {},
        {
            "tenant": "demo-lab",
            "name": "ok",
            "command": "true",
            "gpu_type": "h100",
            "gpu_count": 1,
            "time_limit_minutes": 5,
        },
        {
            "tenant": "demo-lab",
            "name": "bad name!",
            "command": "",
            "gpu_type": "nope",
            "gpu_count": 0,
            "time_limit_minutes": 0,
            "env": {"1BAD": "x"},
            "cpus": -1,
            "extra": 1,
        },
        {
            "tenant": "demo-lab",
            "name": "x",
            "command": "true",
            "gpu_type": "h100",
            "gpu_count": "two",
            "time_limit_minutes": 99999999,
            "priority": 101,
            "env": ["not", "a", "dict"],
        },
    ],
)
def test_validation_is_the_same_as_drfs_own(data, cluster):
    reused, own = JobCreateSerializer(data=data), plain(JobCreateSerializer)(data=data)
    assert reused.is_valid() == own.is_valid()
    assert reused.errors == own.errors
    if own.is_valid():
        assert reused.validated_data == own.validated_data


@pytest.mark.django_db
def test_representation_is_the_same_as_drfs_own(make_job):
    job = make_job(env={"EPOCHS": "3"})
    job.queue_position = 1
    assert JobSerializer(job).data == plain(JobSerializer)(job).data

"""Platform files reshape the tenant tree in one apply, and never into a loop."""

from __future__ import annotations

import pytest

from factory.models import Tenant
from platform_config import applying, loading

pytestmark = pytest.mark.django_db


def apply(text: str):
    return applying.apply(loading.from_texts([("", text)]))


def parents() -> dict[str, str | None]:
    return dict(Tenant.objects.values_list("slug", "parent__slug"))


def test_a_file_can_turn_a_department_and_its_organisation_around():
    apply("tenants:\n- {slug: org, name: Org}\n- {slug: dept, name: Dept, parent: org}")
    assert parents() == {"org": None, "dept": "org"}
    for _ in range(2):  # either row may be written first: the database sees no loop on the way
        apply("tenants:\n- {slug: org, name: Org, parent: dept}\n- {slug: dept, name: Dept}")
        assert parents() == {"org": "dept", "dept": None}
        apply("tenants:\n- {slug: org, name: Org}\n- {slug: dept, name: Dept, parent: org}")
        assert parents() == {"org": None, "dept": "org"}


def test_a_loop_in_a_file_is_refused_with_its_path():
    with pytest.raises(loading.Invalid) as refused:
        apply("tenants:\n- {slug: a, name: A, parent: b}\n- {slug: b, name: B, parent: a}")
    assert "tenants[0].parent" in {p.path for p in refused.value.problems}
    assert not Tenant.objects.exists()

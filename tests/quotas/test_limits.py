"""What a tenant's quotas become as a cluster's own limits (the Slurm side is tested on the real
Slurm in tests/integration/test_slurm.py)."""

from __future__ import annotations

import pytest

from factory.adapters import GpuLimit
from factory.adapters.slurm.cli import gpu_tres as _gpu_tres
from quotas import limits
from quotas.models import Quota

pytestmark = pytest.mark.django_db


def test_a_ceiling_is_what_admission_could_ever_give(tenant, other_tenant, h100, a100):
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=4, borrowing_limit=2, max_gpus_per_job=4)
    Quota.objects.create(tenant=tenant, gpu_type=a100, nominal=8)  # may borrow any idle GPUs
    assert limits.limits_for([tenant, other_tenant], [h100, a100]) == {
        tenant.slug: {"h100": GpuLimit(6, 4), "a100": GpuLimit(None, None)},
        other_tenant.slug: {"h100": GpuLimit(0, None), "a100": GpuLimit(0, None)},  # no quota: none
    }


def test_clusters_without_limits_of_their_own_are_left_alone(tenant, h100, cluster):
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=4, borrowing_limit=0)
    assert not cluster.adapter().keeps_tenant_limits
    assert limits.mirror() == {}


def test_slurm_tres_strings_are_read_for_typed_gpus_only():
    assert _gpu_tres("cpu=4,gres/gpu=8,gres/gpu:h100=3,gres/gpu:a100=0") == {"h100": 3, "a100": 0}
    assert _gpu_tres("") == {}

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from factory import roles
from factory.choices import ClusterKind, PlatformRole, Role
from factory.models import Cluster, GpuType, Identity, Membership, Pool, Tenant
from tests.oidc.server import OidcProvider, TokenProxy

# Playwright's sync API keeps an event loop in the main thread; Django must still allow ORM calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def local_work_root():
    """The local jobs' working directories: outside pytest's temporary directories, which are
    root's alone, since a root worker's jobs run as another user who must reach them."""
    path = Path(tempfile.mkdtemp(prefix="factory-test-work-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def local_backend_root(settings, tmp_path, local_work_root):
    settings.FACTORY_ALLOW_LOCAL_BACKEND = True  # the tests run under production settings
    settings.FACTORY_LOCAL_WORK_ROOT = local_work_root
    settings.FACTORY_LOCAL_BACKEND_ROOT = tmp_path / "local-backend"
    return settings.FACTORY_LOCAL_BACKEND_ROOT


@pytest.fixture
def job_scratch(settings):
    """A directory a test shares with its local jobs (gates, counters): the jobs' user may write
    in it, as a root worker's jobs run as FACTORY_LOCAL_RUN_AS."""
    path = Path(tempfile.mkdtemp(prefix="factory-test-scratch-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(settings.FACTORY_LOCAL_RUN_AS)
        os.chown(path, user.pw_uid, user.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def h100(db) -> GpuType:
    return GpuType.objects.create(slug="h100", name="H100", memory_gb=80, board_power_watts=700)


@pytest.fixture
def a100(db) -> GpuType:
    return GpuType.objects.create(slug="a100", name="A100", memory_gb=80, board_power_watts=400)


@pytest.fixture
def cluster(db, h100, a100) -> Cluster:
    cluster = Cluster.objects.create(slug="local", name="Local", kind=ClusterKind.LOCAL, region="local")
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=4)
    Pool.objects.create(cluster=cluster, gpu_type=a100, capacity=4)
    return cluster


@pytest.fixture
def tenant(db) -> Tenant:
    return Tenant.objects.create(slug="demo-lab", name="Demo Lab")


@pytest.fixture
def other_tenant(db) -> Tenant:
    return Tenant.objects.create(slug="other-lab", name="Other Lab")


def make_user(django_user_model, username: str, **extra):
    return django_user_model.objects.create_user(username=username, password="pw-" + username, **extra)


# The POSIX accounts of the test researchers, which scripts/slurm-dev-cluster makes: Slurm runs
# each job as its owner's.
OWNER_POSIX_USER = "aif-alice"
OUTSIDER_POSIX_USER = "aif-bob"


@pytest.fixture
def owner(django_user_model, tenant):
    user = make_user(django_user_model, "researcher")
    Membership.objects.create(user=user, tenant=tenant, role=Role.MEMBER)
    Identity.objects.create(user=user, posix_username=OWNER_POSIX_USER)
    return user


@pytest.fixture
def teammate(django_user_model, tenant):
    user = make_user(django_user_model, "teammate")
    Membership.objects.create(user=user, tenant=tenant, role=Role.MEMBER)
    return user


@pytest.fixture
def tenant_admin(django_user_model, tenant):
    user = make_user(django_user_model, "labadmin")
    Membership.objects.create(user=user, tenant=tenant, role=Role.ADMIN)
    return user


@pytest.fixture
def outsider(django_user_model, other_tenant):
    user = make_user(django_user_model, "outsider")
    Membership.objects.create(user=user, tenant=other_tenant, role=Role.MEMBER)
    Identity.objects.create(user=user, posix_username=OUTSIDER_POSIX_USER)
    return user


@pytest.fixture
def platform_admin(django_user_model):
    user = make_user(django_user_model, "platform")
    roles.grant(user, PlatformRole.PLATFORM_ADMIN)
    return user


@pytest.fixture
def finance_user(django_user_model):
    user = make_user(django_user_model, "finance")
    roles.grant(user, PlatformRole.FINANCE)
    return user


@pytest.fixture
def auditor(django_user_model):
    user = make_user(django_user_model, "auditor")
    roles.grant(user, PlatformRole.AUDITOR)
    return user


def job_spec(**overrides) -> dict:
    spec = {
        "name": "train-1",
        "command": "echo hello",
        "gpu_count": 1,
        "time_limit_minutes": 10,
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def make_job(cluster, tenant, owner, h100):
    from jobs import submission

    def make(*, tenant=tenant, owner=owner, gpu_type=h100, **overrides):
        job, _ = submission.submit(tenant=tenant, owner=owner, spec=job_spec(gpu_type=gpu_type, **overrides))
        return job

    return make


@pytest.fixture(autouse=True)
def fresh_cache():
    """Throttle counters live in the cache (in Redis, clearing it deletes only the cache's own
    keys, not the Celery broker's), token users in the API's memory; each test starts from
    nothing. Failed sign-ins are in the database, rolled back with each test."""
    from django.core.cache import cache

    from factory.api import authentication

    cache.clear()
    authentication.forget_all()
    yield
    cache.clear()
    authentication.forget_all()


def pytest_collection_modifyitems(config, items):
    """Browser tests go last: Playwright's sync API leaves an event loop running in the main
    thread for the rest of the session, which Django's async test client cannot run under."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture
def quotas(tenant, h100, a100):
    """demo-lab may use the whole local cluster: 4 h100 and 4 a100 nominal."""
    from quotas.models import Quota

    return [
        Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=4),
        Quota.objects.create(tenant=tenant, gpu_type=a100, nominal=4),
    ]


def use_provider(settings, provider: OidcProvider) -> None:
    for name, value in provider.settings().items():
        setattr(settings, name, value)


@pytest.fixture(scope="session")
def oidc_provider_process(tmp_path_factory):
    provider = OidcProvider(tmp_path_factory.mktemp("oidc"), portal_url="http://testserver")
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture
def oidc_provider(oidc_provider_process, settings):
    """The site's identity provider (node's oidc-provider, tests/oidc/), with the portal as
    Django's test client sees it (http://testserver) for its client, and the portal set up to
    sign in through it. One process for the session; its accounts are reset for each test."""
    oidc_provider_process.reset_accounts()
    use_provider(settings, oidc_provider_process)
    return oidc_provider_process


@pytest.fixture
def own_oidc_provider(tmp_path, settings):
    """A provider of the test's own, which it may kill."""
    provider = OidcProvider(tmp_path, portal_url="http://testserver")
    provider.start()
    use_provider(settings, provider)
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def oidc_proxy_process(tmp_path_factory):
    proxy = TokenProxy()
    provider = OidcProvider(
        tmp_path_factory.mktemp("oidc-proxied"), portal_url="http://testserver", issuer=proxy.url
    )
    provider.start()
    proxy.start(provider.port)
    yield provider, proxy
    proxy.stop()
    provider.stop()


@pytest.fixture
def oidc_proxy(oidc_proxy_process, settings):
    """The provider behind a proxy that is its issuer, so that a test can replace the ID token it
    issues (`proxy.replace_id_token`) while the rest of the flow stays real."""
    provider, proxy = oidc_proxy_process
    provider.reset_accounts()
    use_provider(settings, provider)
    yield provider, proxy
    proxy.replace_id_token = None

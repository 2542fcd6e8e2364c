"""The API against its own OpenAPI schema, with schemathesis.

Every operation gets generated requests: random valid ones as each kind of user, and the schema's
edge cases, valid and invalid (boundary values, missing fields, wrong types, other content types
and methods), as a platform admin, who gets past every permission check to the validation. Each
answer must be no server error, with a documented status, content type and body, and every 4xx
must say what is wrong: `{"detail": "..."}` or messages per field. The requests are few
(MAX_EXAMPLES random ones per operation and role; the edge cases are a fixed set) and the same
every run (a fixed seed).

Requests go straight to the WSGI application inside the test's transaction, so the jobs they
submit and cancel are rolled back with it, and the tasks those would enqueue on commit never are:
no worker or broker is involved.
"""

from __future__ import annotations

import logging
from datetime import date
from decimal import Decimal

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis import Config

from billing.models import RateCard
from factory.models import ApiToken
from jobs import lifecycle
from quotas.models import Budget

# Role → the conftest fixture that makes such a user.
ROLES = {
    "researcher": "owner",
    "tenant_admin": "tenant_admin",
    "platform_admin": "platform_admin",
    "finance": "finance_user",
}
MAX_EXAMPLES = 5  # random requests per operation and role
# Random text is rarely a valid job name (a pattern the schema does not show).
JOB_NAMES = ["train-1", "eval.2"]


def load_schema(*, fuzzing: bool, coverage: bool):
    config = {
        "seed": 20261129,  # the same requests every run; another seed explores others
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "database": "none",
            # Invalid random requests cost far more to generate than the invalid edge cases.
            "mode": "positive" if fuzzing else "all",
        },
        "phases": {
            "examples": {"enabled": False},
            "fuzzing": {"enabled": fuzzing},
            "coverage": {"enabled": coverage},
            "stateful": {"enabled": False},
        },
        "dictionaries": {"job_names": {"values": JOB_NAMES}},
        "parameters": {"body.name": {"dictionary": "job_names", "probability": 0.5}},
        "checks": {
            # A schema cannot say that a slug must exist or that a pool must be big enough...
            "positive_data_acceptance": {"enabled": False},
            # ...and DRF's pagination ignores a malformed page_size by design.
            "negative_data_rejection": {"enabled": False},
            # Resending without credentials: once per role is enough, not per edge case.
            "ignored_auth": {"enabled": fuzzing},
        },
    }
    return schemathesis.openapi.from_wsgi("/api/v1/schema/", APP, config=Config.from_dict(config))


APP = get_wsgi_application()
random_requests = load_schema(fuzzing=True, coverage=False)
edge_cases = load_schema(fuzzing=False, coverage=True)


def messages(value) -> bool:
    """A non-empty list of messages, or (for nested fields) a mapping of such."""
    if isinstance(value, list):
        return bool(value) and all(isinstance(m, str) and m for m in value)
    if isinstance(value, dict):
        return bool(value) and all(messages(v) for v in value.values())
    return False


def client_errors_say_what_is_wrong(ctx, response, case) -> None:
    if not 400 <= response.status_code < 500:
        return
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body") from None
    if isinstance(body, dict) and set(body) == {"detail"}:
        assert isinstance(body["detail"], str) and body["detail"], f"empty detail: {body!r}"
    else:
        assert isinstance(body, dict) and messages(body), f"not messages per field: {body!r}"


@pytest.fixture
def plain_wsgi():
    """Requests reach the WSGI handler as from a server. After each, Django closes the database
    connection, and with it the test's transaction, unless (as its test client does) that hook is
    undone. Django also logs a warning for every 4xx: thousands here (server errors still are)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    logger = logging.getLogger("django.request")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def targets(plain_wsgi, cluster, tenant, quotas, other_tenant, owner, outsider, h100, make_job):
    """Objects for requests to act on: by path prefix, the values of path parameters and of the
    body fields that name other objects."""
    job = make_job()
    lifecycle.cancel(make_job(name="ended"))
    card = RateCard.objects.create(
        gpu_type=h100, currency="EUR", price_per_gpu_hour=Decimal("2.5"), effective_from=date(2026, 1, 1)
    )
    Budget.objects.create(tenant=tenant, gpu_hours_per_month=Decimal(100))
    return {
        "/api/v1/jobs/": ({"id": job.pk}, {"tenant": tenant.slug, "gpu_type": h100.slug}),
        "/api/v1/quotas/": ({"id": quotas[0].pk}, {"tenant": other_tenant.slug, "gpu_type": h100.slug}),
        "/api/v1/rate-cards/": ({"id": card.pk}, {"gpu_type": "a100", "cluster": cluster.slug}),
        "/api/v1/budgets/": ({"tenant": tenant.slug}, {"tenant": other_tenant.slug}),
        "/api/v1/tenants/": (
            {"slug": tenant.slug, "tenant_slug": tenant.slug, "username": owner.username},
            {"parent": other_tenant.slug, "username": outsider.username},
        ),
        "/api/v1/gpu-types/": ({"slug": "a100"}, {}),
        "/api/v1/clusters/": ({"slug": cluster.slug}, {}),
    }


@pytest.fixture(params=ROLES)
def token(request, targets) -> str:
    return ApiToken.issue(request.getfixturevalue(ROLES[request.param]))[1]


@pytest.fixture
def admin_token(platform_admin, targets) -> str:
    return ApiToken.issue(platform_admin)[1]


@pytest.fixture
def sent():
    cases = []
    yield cases
    assert cases, "schemathesis generated no request for this operation"


def send(case, token: str, targets: dict) -> None:
    aim(case, targets)
    case.call_and_validate(
        headers={"Authorization": f"Token {token}"}, additional_checks=[client_errors_say_what_is_wrong]
    )


def aim(case, targets: dict) -> None:
    """Valid requests name objects that exist, to get past the look-up; invalid ones are sent as
    generated. So are methods the path does not have: those would meet the look-up (another
    tenant's object is a 404) before the method check."""
    if case.meta is None or case.method.upper() != case.operation.method.upper():
        return
    path_values, body_values = next(
        (values for prefix, values in targets.items() if case.operation.path.startswith(prefix)), ({}, {})
    )
    if valid(case, "path"):
        case.path_parameters = {name: path_values.get(name, v) for name, v in case.path_parameters.items()}
    if valid(case, "body") and isinstance(case.body, dict):
        case.body = {name: body_values.get(name, v) for name, v in case.body.items()}


def valid(case, location: str) -> bool:
    component = case.meta.components.get(location)
    return component is not None and component.mode is schemathesis.GenerationMode.POSITIVE


# The fixtures hold for all of an operation's requests: one database state, changed as they go.
fixtures_shared = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@random_requests.parametrize()
@fixtures_shared
def test_every_role_gets_documented_answers(case, token, targets, sent):
    sent.append(case)
    send(case, token, targets)


@edge_cases.parametrize()
@fixtures_shared
def test_edge_cases_get_documented_answers(case, admin_token, targets, sent):
    if case.media_type not in (None, "application/json"):
        return  # the same values again as a form: the random requests cover those encodings
    sent.append(case)
    send(case, admin_token, targets)

"""Every month parameter is YYYY-MM; the usage API's old YYYY-MM-01 still works, for one release."""

from __future__ import annotations

import pytest

from billing import metering
from tests.jobs.test_api import client_for

from .conftest import at

pytestmark = pytest.mark.django_db


@pytest.fixture
def october_and_november(prices, ran):
    jobs = [ran(at(2026, 10, 20, 9), at(2026, 10, 20, 10)), ran(at(2026, 11, 2, 9), at(2026, 11, 2, 11))]
    for job in jobs:
        metering.meter_release(job.pk, 0, job.cluster_id, job.started_at, job.ended_at, False)
    return jobs


def months_of(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {row["month"] for row in response.json()["results"]}


def test_usage_is_filtered_by_year_and_month(finance_user, october_and_november):
    api = client_for(finance_user)
    assert months_of(api.get("/api/v1/usage/?month=2026-11")) == {"2026-11-01"}
    assert months_of(api.get("/api/v1/usage/?month=2026-10")) == {"2026-10-01"}
    assert months_of(api.get("/api/v1/usage/")) == {"2026-10-01", "2026-11-01"}


def test_the_old_first_day_form_still_filters_usage(finance_user, october_and_november):
    assert months_of(client_for(finance_user).get("/api/v1/usage/?month=2026-11-01")) == {"2026-11-01"}


@pytest.mark.parametrize("month", ["2026-13", "2026-11-15", "november", "2026-1"])
def test_a_month_in_another_form_is_a_field_error(finance_user, october_and_november, month):
    for url in ("/api/v1/usage/", "/api/v1/reports/chargeback/"):
        response = client_for(finance_user).get(url, {"month": month})
        assert response.status_code == 400
        assert "YYYY-MM" in response.json()["month"][0]


def test_the_chargeback_takes_both_forms_alike(finance_user, october_and_november):
    api = client_for(finance_user)
    new = api.get("/api/v1/reports/chargeback/?month=2026-11").json()
    old = api.get("/api/v1/reports/chargeback/?month=2026-11-01").json()
    assert new == old
    assert new["month"] == "2026-11" and new["totals"]["gpu_hours"] == "2.0000"


def test_the_openapi_schema_documents_the_old_form_as_deprecated(client):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    for path in ("/api/v1/usage/", "/api/v1/reports/chargeback/"):
        (month,) = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "month"]
        assert month["schema"]["pattern"] == r"^\d{4}-(0[1-9]|1[0-2])(-01)?$"
        assert month["schema"]["x-deprecated-forms"] == ["YYYY-MM-01"]
        assert "Deprecated: YYYY-MM-01" in month["description"]

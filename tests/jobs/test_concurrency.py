from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from jobs.models import Job
from tests.jobs.test_api import body, client_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_simultaneous_retries_with_one_idempotency_key_make_one_job(owner, cluster):
    """Eight clients send the same create at the same instant, on separate PostgreSQL connections."""
    assert connection.vendor == "postgresql"
    clients = [client_for(owner) for _ in range(8)]
    barrier = threading.Barrier(len(clients))
    results: list[tuple[int, int]] = []

    def send(api):
        try:
            barrier.wait()
            response = api.post("/api/v1/jobs/", body(), format="json", HTTP_IDEMPOTENCY_KEY="retry-me")
            results.append((response.status_code, response.json()["id"]))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(api,)) for api in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert {status for status, _ in results} == {202}
    assert len({job_id for _, job_id in results}) == 1
    assert Job.objects.count() == 1
    assert Job.objects.get().events.count() == 1


def test_simultaneous_retries_of_an_array_make_one_array(owner, cluster):
    """The same array submission from eight clients at once: the first task's key settles it."""
    from jobs.models import JobArray

    clients = [client_for(owner) for _ in range(8)]
    barrier = threading.Barrier(len(clients))
    results: list[tuple[int, int]] = []

    def send(api):
        try:
            barrier.wait()
            response = api.post(
                "/api/v1/jobs/", body(array="0-199%10"), format="json", HTTP_IDEMPOTENCY_KEY="array-retry"
            )
            results.append((response.status_code, response.json()["id"]))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=send, args=(api,)) for api in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {status for status, _ in results} == {202} and len(results) == 8
    assert len({array_id for _, array_id in results}) == 1
    assert (JobArray.objects.count(), Job.objects.count()) == (1, 200)

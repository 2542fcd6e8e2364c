from __future__ import annotations

import asyncio
import re

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from factory.models import Cluster, Pool
from jobs import lifecycle
from jobs.choices import JobState
from jobs.models import Job, JobEvent
from jobs.tasks import dispatch_jobs
from tests.support import admit

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(client, owner, cluster):
    client.force_login(owner)
    return client


def form_data(**overrides) -> dict:
    data = {
        "tenant": "",
        "name": "train-1",
        "command": "python train.py",
        "gpu_type": "",
        "gpu_count": "1",
        "cpus": "4",
        "memory_gb": "16",
        "time_limit_minutes": "30",
        "env": "EPOCHS=3\nLR=0.1=x",
    }
    data.update(overrides)
    return data


def valid_form(tenant, h100, **overrides) -> dict:
    return form_data(tenant=str(tenant.pk), gpu_type=str(h100.pk), **overrides)


def test_pages_need_a_login(client, cluster):
    for url in ("/jobs/", "/jobs/new/", "/jobs/1/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_login_page_logs_in(client, owner):
    response = client.post("/login/", {"username": "researcher", "password": "pw-researcher"})
    assert response.status_code == 302 and response["Location"] == "/jobs/"


def test_new_job_form_submits_and_lands_on_the_job_page(browser, tenant, h100):
    response = browser.post("/jobs/new/", valid_form(tenant, h100))
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    assert job.env == {"EPOCHS": "3", "LR": "0.1=x"}
    page = browser.get(response["Location"]).content.decode()
    assert "train-1" in page and "Pending" in page and "Submitted by researcher" in page
    assert f'sse-connect="/jobs/{job.pk}/stream/?after=' in page


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"gpu_count": "0"}, "gpu_count", "at least one GPU"),
        ({"gpu_count": "9"}, "gpu_count", "At most 4 h100 GPUs"),
        ({"command": ""}, "command", "required"),
        ({"name": "no spaces"}, "name", "letters, digits"),
        ({"env": "9X=1"}, "env", "not a valid environment variable name"),
        ({"env": "JUSTANAME"}, "env", "Line 1: write NAME=value"),
        ({"time_limit_minutes": "20161"}, "time_limit_minutes", "14 days"),
        ({"time_limit_minutes": "0"}, "time_limit_minutes", "at least 1 minute"),
    ],
)
def test_form_shows_a_message_per_field_and_creates_nothing(browser, tenant, h100, overrides, field, message):
    response = browser.post("/jobs/new/", valid_form(tenant, h100, **overrides))
    assert response.status_code == 400
    form = response.context["form"]
    errors = form.errors.get(field or "__all__", [])
    assert any(message in e for e in errors), form.errors
    assert message.replace("'", "&#x27;") in response.content.decode()
    assert Job.objects.count() == 0


def test_form_refuses_an_image_no_cluster_allows_and_names_what_is(browser, tenant, h100):
    connection = {"in_cluster": True, "allowed_images": ["nvcr.io/nvidia/"]}
    cluster = Cluster.objects.create(slug="k8s", name="K8s", kind="kubernetes", connection=connection)
    Pool.objects.create(cluster=cluster, gpu_type=h100, capacity=8)
    page = browser.get("/jobs/new/").content.decode()
    assert '<label for="id_image">Container image</label>' in page
    response = browser.post("/jobs/new/", valid_form(tenant, h100, gpu_count="8", image="ghcr.io/lab/x:1"))
    assert response.status_code == 400
    assert response.context["form"].errors["image"] == [
        "No cluster that could run this job runs this image: k8s runs only images from nvcr.io/nvidia/."
    ]
    assert Job.objects.count() == 0
    response = browser.post("/jobs/new/", valid_form(tenant, h100, gpu_count="8", image="$(reboot)"))
    assert "Not a valid container image reference" in response.context["form"].errors["image"][0]
    response = browser.post(
        "/jobs/new/", valid_form(tenant, h100, gpu_count="8", image="nvcr.io/nvidia/pytorch:24.05-py3")
    )
    assert response.status_code == 302
    assert Job.objects.get().image == "nvcr.io/nvidia/pytorch:24.05-py3"


def test_form_offers_only_the_users_tenants(browser, tenant, other_tenant, h100):
    response = browser.post("/jobs/new/", form_data(tenant=str(other_tenant.pk), gpu_type=str(h100.pk)))
    assert response.status_code == 400
    assert "tenant" in response.context["form"].errors
    assert list(response.context["form"].fields["tenant"].queryset) == [tenant]


def test_job_list_shows_own_jobs_with_filters(browser, make_job, a100, teammate):
    make_job(name="h-job")
    make_job(name="a-job", gpu_type=a100)
    make_job(name="teammates-job", owner=teammate)
    page = browser.get("/jobs/").content.decode()
    assert "h-job" in page and "a-job" in page and "teammates-job" not in page
    assert "teammates-job" in browser.get("/jobs/?mine=false").content.decode()
    filtered = browser.get("/jobs/?gpu_type=a100").content.decode()
    assert "a-job" in filtered and "h-job" not in filtered
    Job.objects.filter(name="h-job").update(state=JobState.SUCCEEDED)
    assert "a-job" not in browser.get("/jobs/?state=succeeded").content.decode()


def test_job_list_paginates(browser, make_job):
    for i in range(25):
        make_job(name=f"job-{i:02d}")
    first = browser.get("/jobs/").content.decode()
    assert "job-24" in first and "job-04" not in first and "Page 1 of 2" in first
    second = browser.get("/jobs/?page=2").content.decode()
    assert "job-04" in second and "job-24" not in second


def test_live_rows_stop_polling_when_every_job_ended(browser, make_job):
    job = make_job()
    rows = browser.get("/jobs/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="job-rows")
    assert rows.status_code == 200 and 'hx-trigger="every 2s"' in rows.content.decode()
    assert "<html" not in rows.content.decode()
    assert "HX-Request" in rows["Vary"]
    lifecycle.cancel(job)
    rows = browser.get("/jobs/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="job-rows")
    assert rows.status_code == 286


def test_other_tenants_job_is_a_404_on_every_page(client, outsider, make_job):
    job = make_job()
    client.force_login(outsider)
    for url in (f"/jobs/{job.pk}/", f"/jobs/{job.pk}/log/", f"/jobs/{job.pk}/stream/"):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 404
    job.refresh_from_db()
    assert job.state == JobState.PENDING


def test_cancel_button_cancels(browser, make_job):
    job = make_job()
    response = browser.post(f"/jobs/{job.pk}/cancel/")
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED


def test_teammate_may_look_but_not_cancel(client, teammate, make_job):
    job = make_job()
    client.force_login(teammate)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert ">Cancel</button>" not in page
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 403


# --- the live stream ---------------------------------------------------------------------------


async def read_stream(response, timeout: float = 10.0) -> str:
    chunks = []

    async def consume():
        async for chunk in response.streaming_content:
            chunks.append(chunk.decode() if isinstance(chunk, bytes) else chunk)

    await asyncio.wait_for(consume(), timeout)
    return "".join(chunks)


def parse_events(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        event: dict = {}
        for line in block.splitlines():
            key, _, value = line.partition(": ")
            if key == "data":
                event["data"] = event.get("data", "") + ("\n" if "data" in event else "") + value
            elif key in {"id", "event"}:
                event[key] = value
        if "event" in event:
            events.append(event)
    return events


def read_sse(text: str) -> list[dict]:
    """Events as a browser reads them (the EventSource rules): CR, LF and CRLF each end a line, a
    blank line ends an event, and the data lines of an event are joined with LF."""
    events, fields, data = [], {}, []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line:
            if data:
                events.append({**fields, "data": "\n".join(data)})
            fields, data = {}, []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name in {"id", "event"}:
            fields[name] = value
    return events


def test_a_carriage_return_in_a_log_line_keeps_the_event_framing():
    from jobs.views import sse_message

    progress = "epoch 1\r 10%|#    |\r\r 50%|###  |\r\nloss 0.25\n"
    text = sse_message("log", progress, "e3.l40") + sse_message("status", "<p>running</p>", "e3.l40")
    events = read_sse(text)
    assert [(e.get("event"), e.get("id")) for e in events] == [("log", "e3.l40"), ("status", "e3.l40")]
    # Each line end the log had arrives as one: the progress bar's steps become lines of their own.
    assert events[0]["data"] == "epoch 1\n 10%|#    |\n\n 50%|###  |\nloss 0.25\n"
    assert events[1]["data"] == "<p>running</p>"


@pytest.mark.django_db(transaction=True)
def test_stream_sends_timeline_status_and_closes_when_job_ended(owner, make_job):
    async def scenario():
        from asgiref.sync import sync_to_async

        job = await sync_to_async(make_job)()
        await sync_to_async(lifecycle.cancel)(job, owner)
        client = AsyncClient()
        await sync_to_async(client.force_login)(owner)
        response = await client.get(f"/jobs/{job.pk}/stream/")
        assert response["Content-Type"] == "text/event-stream"
        events = parse_events(await read_stream(response))
        kinds = [e["event"] for e in events]
        assert kinds == ["timeline", "status", "done"]
        assert "Submitted by researcher" in events[0]["data"] and "Cancelled" in events[0]["data"]
        assert "state-cancelled" in events[1]["data"]
        last_id = await sync_to_async(lambda: JobEvent.objects.filter(job=job).last().pk)()
        assert events[-1]["id"] == f"e{last_id}.l0"

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
def test_stream_resumes_after_last_event_id(owner, make_job):
    async def scenario():
        from asgiref.sync import sync_to_async

        job = await sync_to_async(make_job)()
        first_event = await sync_to_async(lambda: job.events.first().pk)()
        await sync_to_async(lifecycle.cancel)(job, owner)
        client = AsyncClient()
        await sync_to_async(client.force_login)(owner)
        response = await client.get(
            f"/jobs/{job.pk}/stream/", headers={"Last-Event-ID": f"e{first_event}.l0"}
        )
        events = parse_events(await read_stream(response))
        timeline = events[0]["data"]
        assert "Cancelled" in timeline and "Submitted by" not in timeline

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
def test_stream_follows_a_running_job_and_its_log(owner, make_job, cluster, settings):
    async def scenario():
        from asgiref.sync import sync_to_async

        from jobs import dispatch

        settings.FACTORY_STREAM_POLL_INTERVAL = 0.1
        job = await sync_to_async(make_job)(command="echo one; sleep 1; echo '<two>'")
        client = AsyncClient()
        await sync_to_async(client.force_login)(owner)
        response = await client.get(f"/jobs/{job.pk}/stream/")

        async def drive():
            await sync_to_async(admit)(job, cluster)
            await sync_to_async(dispatch_jobs)([job.pk])
            for _ in range(100):
                await sync_to_async(dispatch.sync_cluster)(cluster)
                await asyncio.sleep(0.1)

        driver = asyncio.create_task(drive())
        try:
            events = parse_events(await read_stream(response, timeout=20))
        finally:
            driver.cancel()
        log = "".join(e["data"] for e in events if e["event"] == "log")
        assert log == "one\n&lt;two&gt;\n"
        timeline = "".join(e["data"] for e in events if e["event"] == "timeline")
        for label in ("Admitted", "Accepted by local", "Running", "Succeeded"):
            assert label in timeline
        assert events[-1]["event"] == "done"

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
def test_stream_pushes_a_changed_wait_reason_and_queue_position(owner, make_job, settings):
    from asgiref.sync import sync_to_async

    from jobs.views import stream_step

    settings.FACTORY_STREAM_POLL_INTERVAL = 0.05
    job = make_job()
    request = type("Request", (), {"user": owner, "META": {}})()
    out, last_event, offset, status, done = stream_step(request, job.pk, 0, 0, "")
    assert [m.split("\n")[0] for m in out] == [f"id: e{last_event}.l0"] * 2
    assert "Position 1 among pending h100 jobs" in status and not done
    out, *_ = stream_step(request, job.pk, last_event, offset, status)
    assert out == []  # nothing changed, nothing sent
    from jobs.models import Job

    Job.objects.filter(pk=job.pk).update(reason="tenant quota h100: 4 of 4 in use, no idle GPUs to borrow")
    out, _, _, status, _ = stream_step(request, job.pk, last_event, offset, status)
    assert len(out) == 1 and "event: status" in out[0]
    assert "Waiting: tenant quota h100: 4 of 4 in use" in status
    assert sync_to_async  # the stream runs this step in a thread

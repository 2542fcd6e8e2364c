"""A researcher in headless Chromium: log in, submit through the form, watch the job run live."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def log_in(page: Page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()


def test_researcher_submits_a_job_and_watches_it_succeed_without_reload(
    page: Page, web_server, celery_worker_process, owner, cluster, quotas
):
    log_in(page, web_server, "researcher", "pw-researcher")
    page.get_by_role("link", name="New job").first.click()
    page.get_by_label("Name").fill("hello-gpu")
    page.get_by_label("Command").fill(
        'echo "starting on $CUDA_VISIBLE_DEVICES"; sleep 2; echo "done: $GREETING"'
    )
    page.get_by_label("GPU type").select_option(label="h100")
    page.get_by_label("GPU count").fill("2")
    page.get_by_label("Time limit (minutes)").fill("5")
    page.get_by_label("Environment variables").fill("GREETING=hi there")
    page.get_by_role("button", name="Submit job").click()

    expect(page.get_by_role("heading", name="hello-gpu")).to_be_visible()
    navigations: list[str] = []
    page.on(
        "framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None
    )
    page.evaluate("window.__same_document = true")

    state = page.locator("#job-state")
    expect(state).to_have_text("Running", timeout=20_000)
    expect(page.locator("#log")).to_contain_text("starting on 0,1", timeout=10_000)
    expect(state).to_have_text("Succeeded", timeout=20_000)
    expect(page.locator("#log")).to_contain_text("done: hi there")
    timeline = page.locator("#timeline")
    for label in ("Pending", "Admitted", "Submitted", "Running", "Succeeded"):
        expect(timeline).to_contain_text(label)
    assert page.evaluate("window.__same_document") is True
    assert navigations == []
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)


def test_form_errors_are_shown_next_to_the_fields(page: Page, web_server, owner, cluster):
    log_in(page, web_server, "researcher", "pw-researcher")
    page.goto(f"{web_server}/jobs/new/")
    page.get_by_label("Name").fill("bad name!")
    page.get_by_label("Command").fill("true")
    page.get_by_label("GPU count").fill("0")
    page.get_by_role("button", name="Submit job").click()
    expect(page.get_by_text("Use 1 to 64 characters")).to_be_visible()
    expect(page.get_by_text("Ask for at least one GPU.")).to_be_visible()


def test_job_list_badges_update_live(
    page: Page, web_server, celery_worker_process, owner, cluster, quotas, job_scratch
):
    from factory.models import GpuType
    from jobs import submission
    from tests.conftest import job_spec

    gate = job_scratch / "gate"
    submission.submit(
        tenant=owner.tenants.get(),
        owner=owner,
        spec=job_spec(
            name="gated",
            gpu_type=GpuType.objects.get(slug="h100"),
            command=f"while [ ! -e {gate} ]; do sleep 0.2; done",
        ),
    )
    log_in(page, web_server, "researcher", "pw-researcher")
    row = page.get_by_role("row", name="gated")
    expect(row).to_contain_text("Running", timeout=20_000)
    page.evaluate("window.__same_document = true")
    gate.touch()
    expect(row).to_contain_text("Succeeded", timeout=20_000)
    assert page.evaluate("window.__same_document") is True


def test_an_array_from_the_form_is_one_row_that_opens_in_place_and_counts_live(
    page: Page, web_server, celery_worker_process, owner, cluster, quotas, job_scratch
):
    gate = job_scratch / "gate"
    log_in(page, web_server, "researcher", "pw-researcher")
    page.get_by_role("link", name="New job").first.click()
    page.get_by_label("Name").fill("shards")
    page.get_by_label("Command").fill(
        f'echo "shard $FACTORY_ARRAY_INDEX"; while [ ! -e {gate} ]; do sleep 0.2; done'
    )
    page.get_by_label("GPU type").select_option(label="h100")
    page.get_by_label("Time limit (minutes)").fill("5")
    page.get_by_label("Cluster or region").select_option(label="local (local)")
    page.get_by_label("Array").fill("0-2%2")
    page.get_by_role("button", name="Submit job").click()
    expect(page.get_by_role("heading", name="shards")).to_be_visible()
    expect(page.locator("#array-counts")).to_contain_text("3 pending")

    page.get_by_role("link", name="Jobs", exact=True).first.click()
    row = page.locator("tr.array-row")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("2 running", timeout=20_000)  # the limit: two at once
    expect(row).to_contain_text("1 pending")
    page.evaluate("window.__same_document = true")
    row.get_by_role("link", name="show tasks").click()
    tasks = page.locator("tr.array-task")
    expect(tasks).to_have_count(3)
    expect(tasks.first).to_contain_text("task 0")
    gate.touch()
    expect(row).to_contain_text("3 succeeded", timeout=30_000)
    expect(page.locator("tr.array-task")).to_have_count(3)  # still open while the list refreshed
    assert page.evaluate("window.__same_document") is True


def test_platform_admin_sees_a_failed_gpu_turn_red_without_reload(
    page: Page, asgi_server, platform_admin, cluster
):
    """The GPUs are the exporter simulator's (no GPU exists here), scraped over HTTP."""
    import threading

    from fleet.inventory import local_simulated_nodes
    from fleet.scrape import scrape_cluster
    from fleet.simulator import Simulator, gpu_uuid, serve

    server = serve(Simulator([]), "127.0.0.1", 0)
    simulator = Simulator(local_simulated_nodes(f"http://127.0.0.1:{server.server_address[1]}"))
    server.RequestHandlerClass.simulator = simulator
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        scrape_cluster(cluster)
        log_in(page, asgi_server, "platform", "pw-platform")
        page.goto(f"{asgi_server}/clusters/local/fleet/")
        row = page.locator(f"#gpu-{gpu_uuid('local-h100', 3)}")
        expect(row).to_have_attribute("data-health", "healthy")
        page.evaluate("window.__same_document = true")
        simulator.inject("local-h100", "xid79", 3)
        scrape_cluster(cluster)
        expect(row).to_have_attribute("data-health", "failed", timeout=10_000)
        expect(row).to_contain_text("XID 79 (GPU has fallen off the bus) on GPU 3")
        expect(row.locator(".badge")).to_have_css("color", "rgb(198, 40, 40)")
        assert page.evaluate("window.__same_document") is True
    finally:
        server.shutdown()
        server.server_close()

"""Arrays and sweeps: one submission, a job per task, each counted like any job, at most the
array's limit holding GPUs at once, folded into one row of the job list, cancelled whole or by
task."""

from __future__ import annotations

import time
from decimal import Decimal
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from factory.adapters.base import job_env
from factory.choices import ClusterKind
from factory.models import Cluster, Pool
from jobs import arrays, dispatch, submission
from jobs.choices import HOLDING_STATES, JobState
from jobs.models import Job, JobArray, JobEvent
from jobs.tasks import dispatch_batches, native_array_tasks
from quotas.admission import admit_pending
from quotas.models import Budget, Quota
from tests.conftest import job_spec

pytestmark = pytest.mark.django_db

URL = "/api/v1/jobs/"


@pytest.fixture(autouse=True)
def run_on_commit(django_capture_on_commit_callbacks):
    """Admission and cancels enqueue backend work on commit; these tests look at the portal's side."""
    with django_capture_on_commit_callbacks():
        yield


@pytest.fixture
def api(owner, cluster):
    client = APIClient()
    client.force_authenticate(owner)
    return client


def body(**overrides) -> dict:
    return {
        "tenant": "demo-lab",
        "name": "shard",
        "command": "echo index=$FACTORY_ARRAY_INDEX lr=$LR",
        "gpu_type": "h100",
        "gpu_count": 1,
        "time_limit_minutes": 60,
        **overrides,
    }


def make_array(tenant, owner, h100, array: str = "0-3", sweep=None, **overrides) -> JobArray:
    spec = job_spec(gpu_type=h100, **overrides)
    tasks = arrays.parse(array, sweep, spec.get("env") or {})
    made, _ = submission.submit_array(tenant=tenant, owner=owner, spec=spec, tasks=tasks)
    return made


def states(array: JobArray) -> list[str]:
    return list(array.tasks.order_by("array_index").values_list("state", flat=True))


# --- the grammar ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "indexes", "limit"),
    [
        ("0-3%2", (0, 1, 2, 3), 2),
        ("1,3,5-7", (1, 3, 5, 6, 7), None),
        ("0-8:4", (0, 4, 8), None),
        (" 7 ", (7,), None),
    ],
)
def test_arrays_speak_slurms_grammar(text, indexes, limit):
    parsed = arrays.parse(text, None)
    assert (parsed.indexes, parsed.max_running) == (indexes, limit)
    assert arrays.parse(parsed.text, None) == parsed


@pytest.mark.parametrize(
    ("array", "sweep", "field", "words"),
    [
        ("a-b", None, "array", "is not an index"),
        ("5-1", None, "array", "runs backwards"),
        ("0-3%0", None, "array", "%1 or more"),
        ("0-3%x", None, "array", "not a number"),
        ("1,2,1", None, "array", "Index 1 is named twice"),
        ("%2", None, "array", "Name the tasks' indexes"),
        ("0-1", [{"LR": 1}], "array", "only limit how many"),
        ("", [{"1LR": "x"}], "sweep", "Set 0: '1LR' is not a valid environment variable name"),
        ("", [{"LR": [1, 2]}], "sweep", "Set 0: the value of LR must be a number or text"),
        ("", "LR=1", "sweep", "Give a list of parameter sets"),
    ],
)
def test_arrays_that_cannot_be_say_why(array, sweep, field, words):
    with pytest.raises(ValidationError) as caught:
        arrays.parse(array, sweep)
    assert words in caught.value.message_dict[field][0]


def test_the_maximum_is_counted_before_anything_is_expanded(settings):
    settings.FACTORY_MAX_ARRAY_TASKS = 10
    with pytest.raises(ValidationError) as caught:
        arrays.parse("0-999999999", None)
    assert caught.value.message_dict["array"] == [
        "An array may have at most 10 tasks (FACTORY_MAX_ARRAY_TASKS)."
    ]
    assert arrays.parse("0-9", None).size == 10


# --- submitting through the API ------------------------------------------------------------------


def test_one_request_makes_a_job_per_task_and_answers_with_the_array(api, owner):
    response = api.post(URL, body(array="0-9%3"), format="json")
    assert response.status_code == 202, response.content
    data = response.json()
    array = JobArray.objects.get()
    assert response["Location"] == f"/jobs/arrays/{array.pk}/"
    assert (data["id"], data["array"], data["size"], data["max_running"]) == (array.pk, "0-9%3", 10, 3)
    assert data["counts"] == {"pending": 10} and data["active"] == 10
    tasks = list(Job.objects.order_by("array_index"))
    assert [t.array_index for t in tasks] == list(range(10)) and data["job_ids"] == [t.pk for t in tasks]
    assert {(t.owner, t.tenant.slug, t.gpu_count, t.state) for t in tasks} == {
        (owner, "demo-lab", 1, "pending")
    }
    assert (
        JobEvent.objects.filter(job__array=array, message__startswith="Submitted by researcher").count() == 10
    )
    listed = api.get(URL, {"array": array.pk}).json()["results"]
    assert sorted(job["array_index"] for job in listed) == list(range(10))
    assert {job["array"] for job in listed} == {array.pk}


def test_each_task_learns_its_index_and_a_sweep_its_parameters(api):
    sweep = [{"LR": 0.1, "BATCH": 32}, {"LR": "0.01", "EPOCHS": "9"}, {"WARM": True}]
    response = api.post(URL, body(sweep=sweep, array="%2", env={"EPOCHS": "3"}), format="json")
    assert response.status_code == 202, response.content
    assert response.json()["array"] == "%2" and response.json()["sweep"][0] == {"LR": "0.1", "BATCH": "32"}
    tasks = list(Job.objects.order_by("array_index"))
    assert [t.env for t in tasks] == [
        {"EPOCHS": "3", "LR": "0.1", "BATCH": "32"},
        {"EPOCHS": "9", "LR": "0.01"},
        {"EPOCHS": "3", "WARM": "true"},
    ]
    envs = [job_env(t) for t in tasks]
    assert [env["FACTORY_ARRAY_INDEX"] for env in envs] == ["0", "1", "2"]
    assert {env["FACTORY_ARRAY_ID"] for env in envs} == {str(tasks[0].array_id)}
    assert {env["FACTORY_JOB_UID"] for env in envs} == {str(t.uid) for t in tasks}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"array": "0-9,x"}, "array"),
        ({"array": "0-10001"}, "array"),  # over the default maximum, 10,000
        ({"sweep": [{"FACTORY_ARRAY_INDEX": "7"}]}, "sweep"),
        ({"array": "0-3", "env": {"FACTORY_ARRAY_INDEX": "7"}}, "env"),
        ({"array": "0-3", "gpu_count": 99}, "gpu_count"),
    ],
)
def test_a_bad_array_is_a_field_error_and_creates_nothing(api, overrides, field):
    response = api.post(URL, body(**overrides), format="json")
    assert response.status_code == 400 and field in response.json(), response.content
    assert not Job.objects.exists() and not JobArray.objects.exists()


def test_the_maximum_is_a_setting(api, settings):
    settings.FACTORY_MAX_ARRAY_TASKS = 4
    response = api.post(URL, body(array="0-4"), format="json")
    assert response.json() == {"array": ["An array may have at most 4 tasks (FACTORY_MAX_ARRAY_TASKS)."]}
    assert api.post(URL, body(array="0-3"), format="json").status_code == 202


def test_a_retried_array_submission_makes_the_array_once(api):
    first = api.post(URL, body(array="0-49"), format="json", HTTP_IDEMPOTENCY_KEY="sweep-1")
    again = api.post(URL, body(array="0-49"), format="json", HTTP_IDEMPOTENCY_KEY="sweep-1")
    assert (first.status_code, again.status_code) == (202, 202)
    assert again["Idempotent-Replayed"] == "true" and again.json()["id"] == first.json()["id"]
    assert again.json()["job_ids"] == first.json()["job_ids"]
    assert (JobArray.objects.count(), Job.objects.count()) == (1, 50)
    other = api.post(URL, body(array="0-9"), format="json", HTTP_IDEMPOTENCY_KEY="sweep-1")
    single = api.post(URL, body(), format="json", HTTP_IDEMPOTENCY_KEY="sweep-1")
    assert (other.status_code, single.status_code) == (409, 409)
    assert (JobArray.objects.count(), Job.objects.count()) == (1, 50)


def test_arrays_are_listed_counted_and_hidden_from_other_tenants(api, owner, outsider, tenant, h100):
    array = make_array(tenant, owner, h100, "0-2")
    array.tasks.filter(array_index=0).get().reject("no")
    data = api.get(f"/api/v1/arrays/{array.pk}/").json()
    assert data["counts"] == {"pending": 2, "rejected": 1} and data["active"] == 2
    assert len(data["job_ids"]) == 3
    assert [a["id"] for a in api.get("/api/v1/arrays/").json()["results"]] == [array.pk]
    stranger = APIClient()
    stranger.force_authenticate(outsider)
    assert stranger.get(f"/api/v1/arrays/{array.pk}/").status_code == 404
    assert stranger.post(f"/api/v1/arrays/{array.pk}/cancel/").status_code == 404
    assert stranger.get("/api/v1/arrays/").json()["results"] == []


# --- admission ------------------------------------------------------------------------------------


def test_at_most_the_arrays_limit_of_tasks_hold_gpus_at_once(tenant, owner, h100, cluster, quotas):
    array = make_array(tenant, owner, h100, "0-5%2")
    assert admit_pending().admitted == 2
    assert states(array) == ["admitted"] * 2 + ["pending"] * 4
    assert set(array.tasks.filter(state="pending").values_list("reason", flat=True)) == {
        "array limit: 2 of its tasks at once"
    }
    first = array.tasks.get(array_index=0)
    first.mark_submitted("1")
    first.finish(JobState.SUCCEEDED, exit_code=0)
    assert admit_pending().admitted == 1
    assert states(array) == ["succeeded", "admitted", "admitted"] + ["pending"] * 3


def test_quotas_count_each_task(tenant, owner, h100, cluster, quotas):
    Quota.objects.filter(gpu_type=h100).update(nominal=3, borrowing_limit=0)
    array = make_array(tenant, owner, h100, "0-9", gpu_count=1)
    admit_pending()
    assert array.tasks.filter(state__in=HOLDING_STATES).count() == 3
    assert (
        array.tasks.get(array_index=3).reason == "tenant quota h100: 3 of 3 in use, borrowing limit reached"
    )


def test_budgets_count_each_task(tenant, owner, h100, cluster, quotas):
    Budget.objects.create(tenant=tenant, gpu_hours_per_month=Decimal("2.5"), hard=True)
    array = make_array(tenant, owner, h100, "0-9", gpu_count=1, time_limit_minutes=60)
    admit_pending()
    assert array.tasks.filter(state__in=HOLDING_STATES).count() == 2
    assert array.tasks.get(array_index=2).reason == "budget: 0.5 GPU-h left, job needs 1"


def test_fair_share_counts_an_arrays_tasks_as_jobs(tenant, owner, h100, cluster, django_user_model):
    from factory.models import Membership, Tenant

    other = Tenant.objects.create(slug="team-b", name="Team B")
    bob = django_user_model.objects.create_user("bob")
    Membership.objects.create(user=bob, tenant=other)
    Quota.objects.create(tenant=tenant, gpu_type=h100, nominal=2, borrowing_limit=2)
    Quota.objects.create(tenant=other, gpu_type=h100, nominal=2, borrowing_limit=2)
    array = make_array(tenant, owner, h100, "0-3")  # first, and asking for the whole pool
    theirs = [submission.submit(tenant=other, owner=bob, spec=job_spec(gpu_type=h100))[0] for _ in range(2)]
    admit_pending()
    assert array.tasks.filter(state__in=HOLDING_STATES).count() == 2
    assert all(Job.objects.get(pk=job.pk).state == JobState.ADMITTED for job in theirs)


def test_an_arrays_tasks_go_to_the_cluster_its_first_task_went_to(tenant, owner, h100, cluster, quotas):
    second = Cluster.objects.create(slug="local-b", name="Local B", kind=ClusterKind.LOCAL, region="local")
    Pool.objects.create(cluster=second, gpu_type=h100, capacity=4)
    Quota.objects.filter(gpu_type=h100).update(nominal=8)
    array = make_array(tenant, owner, h100, "0-3")
    admit_pending()
    array.refresh_from_db()
    assert set(array.tasks.values_list("cluster__slug", flat=True)) == {array.cluster.slug}
    single = submission.submit(tenant=tenant, owner=owner, spec=job_spec(gpu_type=h100))[0]
    admit_pending()
    single.refresh_from_db()
    assert single.cluster != array.cluster  # least loaded: the other one


# --- dispatch -------------------------------------------------------------------------------------


def test_an_arrays_tasks_go_out_together_only_where_the_backend_has_arrays(
    tenant, owner, h100, cluster, settings
):
    settings.FACTORY_DISPATCH_BATCH, settings.FACTORY_DISPATCH_SPREAD = 16, 4
    slurm = Cluster.objects.create(slug="slurm-a", name="Slurm", kind=ClusterKind.SLURM, region="local")
    array = make_array(tenant, owner, h100, "0-39")
    ids = list(array.tasks.order_by("array_index").values_list("pk", flat=True))
    single = submission.submit(tenant=tenant, owner=owner, spec=job_spec(gpu_type=h100))[0]

    local = {pk: cluster.pk for pk in ids}
    assert native_array_tasks(local) == {}
    assert [len(batch) for batch in dispatch_batches(ids, native_array_tasks(local))] == [10, 10, 10, 10]

    on_slurm = {**{pk: slurm.pk for pk in ids}, single.pk: slurm.pk}
    together = native_array_tasks(on_slurm)
    assert together == dict.fromkeys(ids, array.pk)
    assert dispatch_batches([*ids, single.pk], together) == [ids, [single.pk]]


def test_on_the_local_backend_each_task_runs_as_a_job_with_its_index(tenant, owner, h100, cluster, quotas):
    array = make_array(
        tenant, owner, h100, "0-2", command='echo "task $FACTORY_ARRAY_INDEX of $FACTORY_ARRAY_ID"'
    )
    admit_pending()
    tasks = list(array.tasks.select_related("cluster", "gpu_type", "tenant", "array").order_by("array_index"))
    dispatch.dispatch_many(tasks)
    deadline = time.monotonic() + 30
    while array.tasks.exclude(state=JobState.SUCCEEDED).exists():
        assert time.monotonic() < deadline, states(array)
        dispatch.sync_cluster(cluster)
        time.sleep(0.2)
    logs = [cluster.adapter().logs(task, 0).text for task in array.tasks.order_by("array_index")]
    assert logs == [f"task {i} of {array.pk}\n" for i in range(3)]


# --- cancelling -----------------------------------------------------------------------------------


def test_cancelling_an_array_ends_what_waits_and_stops_what_runs(
    api, tenant, owner, h100, quotas, django_capture_on_commit_callbacks
):
    array = make_array(tenant, owner, h100, "0-4%3")
    admit_pending()
    array.refresh_from_db()
    running = array.tasks.get(array_index=0)
    running.mark_submitted("77")
    running.mark_running(None)
    with (
        mock.patch("jobs.tasks.cancel_array.delay") as stop,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = api.post(f"/api/v1/arrays/{array.pk}/cancel/")
    assert response.status_code == 202, response.content
    assert states(array) == ["running", "cancelled", "cancelled", "cancelled", "cancelled"]
    assert Job.objects.get(pk=running.pk).cancel_requested_at is not None
    stop.assert_called_once_with(array.pk, cluster_id=array.cluster_id)
    assert response.json()["counts"] == {"running": 1, "cancelled": 4}
    assert JobEvent.objects.filter(job=running, message="Cancel requested by researcher").exists()


def test_cancelling_an_ended_array_is_a_conflict(api, tenant, owner, h100):
    array = make_array(tenant, owner, h100, "0-1")
    Job.objects.filter(array=array).cancel_waiting("gone")
    assert api.post(f"/api/v1/arrays/{array.pk}/cancel/").status_code == 409


def test_one_task_is_cancelled_as_a_job(api, tenant, owner, h100):
    array = make_array(tenant, owner, h100, "0-2")
    task = array.tasks.get(array_index=1)
    assert api.post(f"/api/v1/jobs/{task.pk}/cancel/").status_code == 202
    assert states(array) == ["pending", "cancelled", "pending"]


def test_a_teammate_may_look_at_an_array_but_not_cancel_it(
    tenant, owner, teammate, tenant_admin, h100, cluster
):
    array = make_array(tenant, owner, h100, "0-1")
    mate = APIClient()
    mate.force_authenticate(teammate)
    assert mate.get(f"/api/v1/arrays/{array.pk}/").status_code == 200
    assert mate.post(f"/api/v1/arrays/{array.pk}/cancel/").status_code == 403
    admin = APIClient()
    admin.force_authenticate(tenant_admin)
    assert admin.post(f"/api/v1/arrays/{array.pk}/cancel/").status_code == 202
    assert states(array) == ["cancelled", "cancelled"]


# --- the pages ------------------------------------------------------------------------------------


@pytest.fixture
def browser(client, owner, cluster):
    client.force_login(owner)
    return client


def test_the_job_list_folds_an_array_into_one_row_with_its_tasks_by_state(
    browser, tenant, owner, h100, make_job
):
    array = make_array(tenant, owner, h100, "0-4")
    array.tasks.filter(array_index__in=[0, 1]).update(state=JobState.SUCCEEDED)
    single = make_job(name="lonely")
    page = browser.get("/jobs/").content.decode()
    assert page.count('class="array-row"') == 1 and f'id="array-{array.pk}"' in page
    assert "2 succeeded" in page and "3 pending" in page
    assert "task 3" not in page and f"/jobs/{single.pk}/" in page
    assert 'hx-trigger="every 2s"' in page  # tasks still to run keep the list live


def test_an_array_row_opens_in_place_with_htmx(browser, tenant, owner, h100):
    array = make_array(tenant, owner, h100, "0-2")
    response = browser.get(f"/jobs/?open={array.pk}", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="job-rows")
    rows = response.content.decode()
    assert response.status_code == 200 and "<table" not in rows
    assert all(f">task {i}</a>" in rows for i in range(3))
    assert "hide tasks" in rows
    tasks_only = browser.get(f"/jobs/?array={array.pk}").content.decode()
    assert 'class="array-row"' not in tasks_only and tasks_only.count(f"of array #{array.pk}") == 3


def test_the_array_page_lists_its_tasks_and_cancels_them_all(browser, tenant, owner, h100, outsider, client):
    array = make_array(tenant, owner, h100, "0-2", sweep=None)
    page = browser.get(f"/jobs/arrays/{array.pk}/").content.decode()
    assert "3 pending" in page and "Cancel all 3 unfinished tasks" in page
    response = browser.post(f"/jobs/arrays/{array.pk}/cancel/")
    assert response.status_code == 302 and states(array) == ["cancelled"] * 3
    client.force_login(outsider)
    assert client.get(f"/jobs/arrays/{array.pk}/").status_code == 404


def test_a_tasks_page_names_its_array(browser, tenant, owner, h100):
    array = make_array(tenant, owner, h100, "5-6")
    task = array.tasks.get(array_index=6)
    page = browser.get(f"/jobs/{task.pk}/").content.decode()
    assert f'task 6 of <a href="/jobs/arrays/{array.pk}/">' in page


def form(tenant, h100, **overrides) -> dict:
    return {
        "tenant": str(tenant.pk),
        "name": "sweep",
        "command": "python train.py",
        "gpu_type": str(h100.pk),
        "gpu_count": "1",
        "cpus": "4",
        "memory_gb": "16",
        "time_limit_minutes": "30",
        **overrides,
    }


def test_the_form_submits_an_array(browser, tenant, h100):
    response = browser.post("/jobs/new/", form(tenant, h100, array="0-3%2"))
    array = JobArray.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/arrays/{array.pk}/"
    assert (array.size, array.max_running, array.tasks.count()) == (4, 2, 4)


def test_the_form_submits_a_sweep_one_line_per_task(browser, tenant, h100):
    browser.post("/jobs/new/", form(tenant, h100, env="EPOCHS=3", sweep="LR=0.1 NOTE='a b'\n\nLR=0.01\n"))
    envs = list(Job.objects.order_by("array_index").values_list("env", flat=True))
    assert envs == [{"EPOCHS": "3", "LR": "0.1", "NOTE": "a b"}, {"EPOCHS": "3", "LR": "0.01"}]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"array": "0-10000"}, "An array may have at most 10,000 tasks"),
        ({"array": "3-1"}, "The range 3-1 runs backwards"),
        ({"sweep": "LR"}, "Line 1: write NAME=value pairs"),
    ],
)
def test_the_form_refuses_a_bad_array_and_creates_nothing(browser, tenant, h100, overrides, message):
    response = browser.post("/jobs/new/", form(tenant, h100, **overrides))
    assert response.status_code == 400 and message in response.content.decode()
    assert not Job.objects.exists() and not JobArray.objects.exists()


def test_a_template_keeps_the_array(browser, tenant, h100):
    data = form(tenant, h100, array="0-9%2", save_template="1", **{"template-name": "shards"})
    response = browser.post("/jobs/new/", data)
    assert response.status_code == 302
    page = browser.get(response["Location"]).content.decode()
    assert 'value="0-9%2"' in page


def test_other_databases_get_the_same_tasks_through_the_orm(tenant, owner, h100, cluster):
    from django.db import connection

    fields = ["array_index", "env", "state", "gpu_count", "name", "idempotency_key", "created_at"]

    def made(key: str) -> list[tuple]:
        spec = job_spec(gpu_type=h100, env={"A": "1"})
        tasks = arrays.parse("", [{"LR": "0.1"}, {"LR": "0.2"}, {}], spec["env"])
        array, _ = submission.submit_array(
            tenant=tenant, owner=owner, spec=spec, tasks=tasks, idempotency_key=key
        )
        assert array.job_ids == list(array.tasks.order_by("array_index").values_list("pk", flat=True))
        events = JobEvent.objects.filter(job__array=array).order_by("job__array_index")
        rows = list(array.tasks.order_by("array_index").values_list(*fields[:-1]))
        return [
            (*row, e.message.replace(f"array {array.pk}", "array N"))
            for row, e in zip(rows, events, strict=True)
        ]

    one_statement = made("k1")
    with mock.patch.object(connection, "vendor", "sqlite"):
        orm = made("k2")
    assert [row[:5] for row in one_statement] == [row[:5] for row in orm]
    assert [row[5] for row in one_statement] == ["k1", "", ""] and [row[5] for row in orm] == ["k2", "", ""]
    assert [row[-1] for row in orm] == [f"Submitted by researcher: task {i} of array N" for i in range(3)]
    assert [row[-1] for row in one_statement] == [row[-1] for row in orm]
    assert len(set(Job.objects.values_list("uid", flat=True))) == 6


def test_an_array_runs_after_its_dependencies_like_a_job(api, tenant, owner, h100, quotas, make_job):
    first = make_job(name="prepare")
    response = api.post(URL, body(array="0-2", after_ok=[first.pk]), format="json")
    assert response.status_code == 202, response.content
    array = JobArray.objects.get()
    assert array.tasks.filter(dependencies__on=first).count() == 3
    admit_pending()
    assert set(states(array)) == {"pending"}
    assert set(array.tasks.values_list("reason", flat=True)) == {f"waiting for job #{first.pk} to succeed"}


def test_an_arrays_tasks_wait_admitted_while_slurm_cannot_be_asked(tenant, owner, h100):
    from factory.adapters import BackendUnavailable
    from factory.adapters.slurm.cli import SlurmCLI
    from jobs import lifecycle
    from jobs.tasks import _jobs

    slurm = Cluster.objects.create(slug="slurm-down", name="Down", kind=ClusterKind.SLURM, region="local")
    array = make_array(tenant, owner, h100, "0-2")
    ids = list(array.tasks.order_by("array_index").values_list("pk", flat=True))
    lifecycle.admit_many({pk: (slurm.pk, "Admitted") for pk in ids})
    down = BackendUnavailable("Unable to contact slurm controller")
    with (
        mock.patch.object(SlurmCLI, "execute", autospec=True, side_effect=down) as execute,
        pytest.raises(BackendUnavailable),
    ):
        dispatch.dispatch_many(_jobs(ids))
    assert execute.call_args.args[1][:3] == ["scontrol", "show", "config"]  # which arrays Slurm holds
    assert states(array) == ["admitted"] * 3
    assert all(
        "unreachable; retrying" in t.reason and t.dispatch_lease_until is None for t in array.tasks.all()
    )

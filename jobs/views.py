from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import re
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from factory.adapters import BackendError

from . import lifecycle, live, notifications, submission
from .choices import ACTIVE_STATES, JobState
from .filtersets import JobFilterSet
from .forms import JobForm, NotificationSettingsForm, TemplateForm
from .models import Job, JobArray, JobEvent, JobTemplate, Notification, NotificationSettings

LIST_PAGE_SIZE = 20
# Tasks shown under an array's row when it is opened in the job list; its page lists them all.
OPENED_ARRAY_TASKS = 50
ARRAY_PAGE_SIZE = 100
# A live list stops polling with this status (htmx treats 286 as "stop polling").
HTMX_STOP_POLLING = 286


def visible_job(request: HttpRequest, pk: int, *, with_queue_position: bool = False) -> Job:
    """Another tenant's job is a 404, exactly like one that does not exist."""
    jobs = Job.objects.visible_to(request.user).select_related(
        "tenant", "owner", "gpu_type", "cluster", "array", "requested_cluster"
    )
    if with_queue_position:
        jobs = jobs.with_queue_position()
    return get_object_or_404(jobs, pk=pk)


def fold_arrays(jobs: QuerySet[Job]) -> QuerySet[Job]:
    """One row per array among these jobs (its first task that matches stands for it), and every
    other job, whatever the filters. A task is kept when no earlier task of its array matches:
    a look-up by the array's index per task on the page, not a grouping of every job."""
    earlier = jobs.filter(array_id=OuterRef("array_id"), pk__lt=OuterRef("pk"))
    return jobs.filter(Q(array__isnull=True) | ~Exists(earlier))


def array_counts(array_ids) -> dict[int, dict[str, int]]:
    """{array id: {state: tasks}}, in one query."""
    counts: dict[int, dict[str, int]] = {pk: {} for pk in array_ids}
    rows = Job.objects.filter(array_id__in=list(counts)).order_by().values_list("array_id", "state")
    for array_id, state, n in rows.annotate(n=Count("id")).values_list("array_id", "state", "n"):
        counts[array_id][state] = n
    return counts


def state_summary(counts: dict[str, int]) -> list[tuple[str, str, int]]:
    """(state, label, tasks) in the lifecycle's order, for the states some task is in."""
    return [(state, label, counts[state]) for state, label in JobState.choices if counts.get(state)]


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    """Jobs, newest first; an array is one row (its tasks counted by state), opened in place with
    ?open=<array id>, or listed alone with ?array=<array id>."""
    params = request.GET.copy()
    if "mine" not in params and not request.user.has_perm("jobs.view_job"):
        params["mine"] = "true"
    filterset = JobFilterSet(
        params,
        queryset=Job.objects.visible_to(request.user).select_related("tenant", "gpu_type", "owner", "array"),
        request=request,
    )
    one_array = bool(params.get("array")) and filterset.is_valid()
    jobs = filterset.qs if one_array else fold_arrays(filterset.qs)
    page = Paginator(jobs, LIST_PAGE_SIZE).get_page(request.GET.get("page"))
    opened = _id_or_none(request.GET.get("open", ""))
    counts = array_counts({job.array_id for job in page if job.array_id}) if not one_array else {}
    rows = []
    for job in page:
        if job.array_id in counts:
            tasks = None
            if job.array_id == opened:
                tasks = list(
                    Job.objects.visible_to(request.user)
                    .filter(array_id=opened)
                    .order_by("array_index")[:OPENED_ARRAY_TASKS]
                )
            rows.append(
                {
                    "job": job,
                    "array": job.array,
                    "counts": state_summary(counts[job.array_id]),
                    "tasks": tasks,
                }
            )
        else:
            rows.append({"job": job})
    active = any(sum(n for state, n in c.items() if state in ACTIVE_STATES) for c in counts.values())
    context = {
        "filter": filterset,
        "page": page,
        "rows": rows,
        "opened": opened,
        "one_array": one_array,
        "live": active or any(not job.is_terminal for job in page),
    }
    if request.htmx and request.htmx.target == "job-rows":
        response = render(request, "jobs/job_list.html#rows", context)
        if not context["live"]:
            response.status_code = HTMX_STOP_POLLING
    else:
        response = render(request, "jobs/job_list.html", context)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _id_or_none(value: str) -> int | None:
    return int(value) if value.isdigit() and len(value) < 19 else None


@login_required
def job_create(request: HttpRequest) -> HttpResponse:
    """The new-job form: empty, started from a template (?template=ID) or from an earlier job
    (?rerun=ID, "Run again"); submitted (a job, or an array of tasks), or saved as a template
    (the second button)."""
    saving = request.method == "POST" and "save_template" in request.POST
    form = JobForm(request.POST or None, user=request.user, initial=form_initial(request))
    template_form = TemplateForm(request.POST if saving else None, prefix="template")
    if request.method == "POST" and form.is_valid():
        if not saving:
            spec, tenant = form.spec(), form.cleaned_data["tenant"]
            tasks = spec.pop("array")
            if tasks is not None:
                array, _ = submission.submit_array(tenant=tenant, owner=request.user, spec=spec, tasks=tasks)
                messages.success(request, f"Array {array.name} submitted: {array.size} tasks.")
                return redirect(array)
            job, _ = submission.submit(tenant=tenant, owner=request.user, spec=spec)
            messages.success(request, f"Job {job.name} submitted.")
            return redirect(job)
        if template_form.is_valid():
            template = save_template(request.user, form, template_form.cleaned_data)
            messages.success(request, f"Template {template.name} saved; start new jobs from it below.")
            return redirect(f"{reverse('jobs:create')}?template={template.pk}")
    context = {
        "form": form,
        "template_form": template_form,
        "templates": JobTemplate.objects.usable_by(request.user).select_related("owner", "tenant"),
    }
    failed = form.errors or template_form.errors
    return render(request, "jobs/job_form.html", context, status=400 if failed else 200)


def form_initial(request: HttpRequest) -> dict:
    """The form's first values: from a template one may use, or a job one may see (never its
    secrets); another tenant's is a 404."""
    if request.method != "GET":
        return {}
    if "rerun" in request.GET:
        job = visible_job(request, _id(request.GET["rerun"]))
        if job.secrets_sealed:
            names = ", ".join(job.secret_names)
            messages.info(request, f"Secrets are never copied: enter {names} again if the job needs them.")
        return JobForm.initial_from_job(job)
    if "template" in request.GET:
        usable = JobTemplate.objects.usable_by(request.user)
        return JobForm.initial_from_template(get_object_or_404(usable, pk=_id(request.GET["template"])))
    return {}


def _id(value: str) -> int:
    if not value.isdigit():
        raise Http404("no such object")
    return int(value)


def save_template(user, form: JobForm, data: dict) -> JobTemplate:
    """Create the user's template of that name, or replace its spec."""
    template, _ = JobTemplate.objects.update_or_create(
        owner=user,
        name=data["name"],
        defaults={
            "tenant": form.cleaned_data["tenant"],
            "shared": data["shared"],
            "spec": form.template_spec(),
        },
    )
    return template


@require_POST
@login_required
def template_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Delete one of your templates; anyone else's is a 404."""
    template = get_object_or_404(JobTemplate, pk=pk, owner=request.user)
    template.delete()
    messages.success(request, f"Template {template.name} deleted.")
    return redirect("jobs:create")


@login_required
def placement_field(request: HttpRequest) -> HttpResponse:
    """The new-job form's cluster-or-region choice for the tenant chosen (?tenant=ID), as htmx
    swaps it in when the tenant changes: only what that tenant's residency permits."""
    form = JobForm(user=request.user, initial={"tenant": request.GET.get("tenant", "")})
    response = HttpResponse(str(form["placement"]))
    patch_vary_headers(response, ["HX-Request"])
    return response


def visible_array(request: HttpRequest, pk: int) -> JobArray:
    """Another tenant's array is a 404, like one that does not exist."""
    arrays = JobArray.objects.visible_to(request.user).select_related("tenant", "owner", "cluster")
    return get_object_or_404(arrays, pk=pk)


@login_required
def array_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """An array: what was asked, its tasks counted by state, and its tasks page by page."""
    array = visible_array(request, pk)
    counts = array_counts([array.pk])[array.pk]
    tasks = Job.objects.filter(array=array).select_related("cluster").order_by("array_index")
    page = Paginator(tasks, ARRAY_PAGE_SIZE).get_page(request.GET.get("page"))
    active = sum(n for state, n in counts.items() if state in ACTIVE_STATES)
    context = {
        "array": array,
        "counts": state_summary(counts),
        "active": active,
        "page": page,
        "may_cancel": active and array.may_cancel(request.user),
    }
    return render(request, "jobs/array_detail.html", context)


@login_required
@require_POST
def array_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    array = visible_array(request, pk)
    if not array.may_cancel(request.user):
        raise PermissionDenied("Only the array's owner or a tenant admin can cancel it.")
    if lifecycle.cancel_array(array, request.user):
        messages.info(request, f"Cancelling every task of {array.name}.")
    if request.htmx:
        return HttpResponse(status=204)
    return redirect(array)


@login_required
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = visible_job(request, pk, with_queue_position=True)
    events = list(job.events.all())
    rank = requested_rank(request, job)
    log = read_log(job, 0, rank)
    context = {
        "job": job,
        "events": events,
        "rank": rank,
        "ranks": range(job.nodes) if job.is_gang else (),
        "log_text": log.text if log else "",
        "log_offset": log.next_offset if log else 0,
        "last_event_id": events[-1].pk if events else 0,
        **status_context(request, job),
    }
    return render(request, "jobs/job_detail.html", context)


def status_context(request: HttpRequest, job: Job, may_cancel: bool | None = None) -> dict:
    """`may_cancel`: whether the user may cancel the job in any state, if already known."""
    if may_cancel is None:
        may_cancel = job.may_cancel(request.user)
    return {"job": job, "may_cancel": job.can_cancel and may_cancel}


@login_required
@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = visible_job(request, pk)
    if not job.may_cancel(request.user):
        raise PermissionDenied("Only the job's owner or a tenant admin can cancel it.")
    if lifecycle.cancel(job, request.user):
        messages.info(request, f"Cancelling {job.name}.")
    if request.htmx:
        return HttpResponse(status=204)
    return redirect(job)


@login_required
def job_log(request: HttpRequest, pk: int) -> HttpResponse:
    """The whole log as plain text, for download."""
    job = visible_job(request, pk)
    rank = requested_rank(request, job)
    parts: list[str] = []
    if job.cluster is not None and job.external_id:
        # One adapter, and one fetch where the backend only serves whole logs; an unreachable
        # backend gives what was read so far.
        with contextlib.suppress(BackendError):
            parts.extend(job.cluster.adapter().full_log(job, rank))
    response = HttpResponse("".join(parts), content_type="text/plain; charset=utf-8")
    suffix = f"-rank{rank}" if job.is_gang else ""
    response["Content-Disposition"] = f'inline; filename="{job.name}-{job.pk}{suffix}.log"'
    return response


def requested_rank(request: HttpRequest, job: Job | None = None) -> int:
    """Which rank's log a page asks for (?rank=N): 0, the first node's, unless the job has N."""
    query = getattr(request, "GET", None) or {}  # a stream may be looked at without a query
    value = str(query.get("rank", "0"))
    rank = int(value) if value.isdigit() and len(value) < 6 else 0
    return rank if job is None or rank < job.nodes else 0


def read_log(job: Job, offset: int, rank: int = 0):
    if job.cluster is None or not job.external_id:
        return None
    try:
        return job.cluster.adapter().logs(job, offset, rank)
    except BackendError:
        return None


# --- live status: server-sent events -------------------------------------------------------------

_CURSOR = re.compile(r"^e(\d+)\.l(\d+)$")
# What ends a line in an event stream: CR, LF and CRLF alike (a progress bar's bare CR too).
_LINE_END = re.compile(r"\r\n|\r|\n")


def sse_message(event: str, data: str, cursor: str | None = None) -> str:
    lines = [f"id: {cursor}"] if cursor else []
    lines.append(f"event: {event}")
    lines += [f"data: {line}" for line in _LINE_END.split(data)]
    return "\n".join(lines) + "\n\n"


def parse_cursor(request: HttpRequest) -> tuple[int, int]:
    """Where the client is: the last event id and log offset it has, from Last-Event-ID on a
    reconnect, else from the query string the page was rendered with."""
    match = _CURSOR.match(request.headers.get("Last-Event-ID", ""))
    if match:
        return int(match[1]), int(match[2])
    try:
        return int(request.GET.get("after", 0)), int(request.GET.get("log", 0))
    except ValueError:
        return 0, 0


# A look reads at most this many events; more are read by the next look, at once.
EVENTS_PER_LOOK = 200
# Seconds of silence after which a stream sends a comment: proxies close silent connections.
KEEP_ALIVE_SECONDS = 15.0


@functools.cache
def stream_jobs() -> QuerySet[Job]:
    """What a look reads of its job, built once per process: building the queue position costs
    more than running the query, and a copy kept by each open stream (some 250 objects) would
    lengthen every full pass of the garbage collector, a pause for all streams of the process."""
    return Job.objects.select_related(
        "cluster", "gpu_type", "tenant", "owner", "array", "requested_cluster"
    ).with_queue_position()


class JobStream:
    """Where one open stream is in its job (the last event and log offset sent, the status shown),
    and the short reads that move it on. The viewer's right to cancel depends on who they are, not
    on the job's state: it is read at the first look only."""

    def __init__(
        self, request: HttpRequest, job_id: int, last_event: int = 0, log_offset: int = 0, status: str = ""
    ) -> None:
        self.request = request
        self.job_id = job_id
        self.last_event, self.log_offset, self.status = last_event, log_offset, status
        self.job: Job | None = None  # as the last look found it
        self.may_cancel: bool | None = None
        self.more_events = False  # the last look stopped at EVENTS_PER_LOOK
        self.log_open = False  # the job's log may still grow
        self.rank = requested_rank(request)  # of a gang, whose log the page follows

    @property
    def cursor(self) -> str:
        return f"e{self.last_event}.l{self.log_offset}"

    @property
    def shown(self) -> live.Shown:
        job = self.job
        return live.Shown(self.last_event, job.updated_at, job.queue_position, job.state)

    def look(self) -> tuple[list[str], bool]:
        """One look at the job: new events, a changed status (state, wait reason, queue position),
        new log text; and whether there is nothing left to learn."""
        self.job = job = stream_jobs().get(pk=self.job_id)
        out: list[str] = []
        newer = JobEvent.objects.filter(job_id=self.job_id, pk__gt=self.last_event).order_by("pk")
        events = list(newer[:EVENTS_PER_LOOK])
        if events:
            self.last_event = events[-1].pk
            timeline = "".join(render_to_string("jobs/job_detail.html#event", {"event": e}) for e in events)
            out.append(sse_message("timeline", timeline, self.cursor))
        if self.may_cancel is None:
            self.may_cancel = job.may_cancel(self.request.user)
        context = {**status_context(self.request, job, self.may_cancel), "streamed": True}
        status = render_to_string("jobs/job_detail.html#status", context, request=self.request)
        if status != self.status:
            self.status = status
            out.append(sse_message("status", status, self.cursor))
        live.release_connections()  # a backend's log may take a while: not on a pooled connection
        out += self.follow_log()
        self.more_events = len(events) == EVENTS_PER_LOOK
        return out, job.is_terminal and not events and not self.log_open

    def follow_log(self) -> list[str]:
        """New text of the job's log, read from its backend (not from the database)."""
        chunk = read_log(self.job, self.log_offset, self.rank if self.rank < self.job.nodes else 0)
        self.log_open = chunk is not None and not chunk.complete
        if not chunk or not chunk.text:
            return []
        self.log_offset = chunk.next_offset
        return [sse_message("log", html.escape(chunk.text), self.cursor)]


def stream_step(
    request: HttpRequest, job_id: int, last_event: int, log_offset: int, last_status: str
) -> tuple[list[str], int, int, str, bool]:
    """One look (JobStream.look), as (messages, last event, log offset, status, done)."""
    stream = JobStream(request, job_id, last_event, log_offset, last_status)
    messages, done = stream.look()
    return messages, stream.last_event, stream.log_offset, stream.status, done


async def job_stream(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    user = await request.auser()
    if not user.is_authenticated:
        return HttpResponse(status=401)
    # Whether the user may see every job is a permission look-up: a synchronous query.
    visible = await sync_to_async(lambda: Job.objects.visible_to(user).filter(pk=pk).exists())()
    # The stream may stay open for hours: the session and permission lookups' connection goes back
    # now, and the stream looks at the database only briefly, when something happened.
    await sync_to_async(live.release_connections)()
    if not visible:
        raise Http404
    last_event, log_offset = parse_cursor(request)
    response = StreamingHttpResponse(
        follow_job(request, pk, last_event, log_offset), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def follow_job(request: HttpRequest, pk: int, last_event: int, log_offset: int) -> AsyncIterator[str]:
    """The messages of a job's stream. It looks at the job when woken (jobs.live: an event was
    committed, or what the page shows moved), and in between holds no thread and no database
    connection: only a log that still grows is read, every FACTORY_STREAM_POLL_INTERVAL seconds,
    from the job's backend."""
    yield "retry: 2000\n\n"
    loop = asyncio.get_running_loop()
    interval = settings.FACTORY_STREAM_POLL_INTERVAL
    stream = JobStream(request, pk, last_event, log_offset)
    quiet_since = loop.time()
    async with live.follow(pk) as follower:
        while True:
            messages, done = await live.briefly(stream.look)
            for message in messages:
                yield message
            if done:
                yield sse_message("done", "finished", stream.cursor)
                return
            if messages:
                quiet_since = loop.time()
            follower.shown = stream.shown
            if stream.more_events:
                continue
            if stream.job.is_terminal:
                # Looked at again shortly: its last events or log lines, then done.
                await follower.wait(interval)
                continue
            while True:
                due = quiet_since + KEEP_ALIVE_SECONDS - loop.time()
                if await follower.wait(min(interval, due) if stream.log_open else max(due, 0.0)):
                    break
                if stream.log_open:
                    for message in await live.briefly(stream.follow_log):
                        yield message
                        quiet_since = loop.time()
                if loop.time() - quiet_since >= KEEP_ALIVE_SECONDS:
                    yield ": keep-alive\n\n"
                    quiet_since = loop.time()


@never_cache  # a new webhook key is on the page
@login_required
def notification_settings(request: HttpRequest) -> HttpResponse:
    """Your notification choices, and what you were sent lately with how its delivery went. A
    webhook's signing key is made with its first address (or on request) and shown once."""
    prefs = NotificationSettings.objects.filter(user=request.user).first() or NotificationSettings(
        user=request.user
    )
    form = NotificationSettingsForm(request.POST or None, instance=prefs)
    new_key = ""
    if request.method == "POST" and form.is_valid():
        prefs = form.save(commit=False)
        if prefs.webhook_url and (not prefs.webhook_key_sealed or "rotate_key" in request.POST):
            new_key = notifications.new_webhook_key()
            prefs.set_webhook_key(new_key)
        elif not prefs.webhook_url:
            prefs.set_webhook_key("")
        prefs.save()
        if not new_key:
            messages.success(request, "Notification settings saved.")
            return redirect("notifications")
    sent = Notification.objects.filter(user=request.user).prefetch_related("deliveries")[:50]
    context = {
        "form": form,
        "new_key": new_key,
        "notifications": sent,
        "has_key": bool(prefs.webhook_key_sealed),
    }
    return render(request, "jobs/notifications.html", context, status=400 if form.errors else 200)

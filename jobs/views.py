from __future__ import annotations

import asyncio
import html
import re

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST

from factory.adapters import BackendError

from . import submission
from .filtersets import JobFilterSet
from .forms import JobForm
from .models import Job, JobEvent

LIST_PAGE_SIZE = 20
# A live list stops polling with this status (htmx treats 286 as "stop polling").
HTMX_STOP_POLLING = 286


def visible_job(request: HttpRequest, pk: int, *, with_queue_position: bool = False) -> Job:
    """Another tenant's job is a 404, exactly like one that does not exist."""
    jobs = Job.objects.visible_to(request.user).select_related("tenant", "owner", "gpu_type", "cluster")
    if with_queue_position:
        jobs = jobs.with_queue_position()
    return get_object_or_404(jobs, pk=pk)


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    params = request.GET.copy()
    if "mine" not in params and not request.user.is_staff:
        params["mine"] = "true"
    filterset = JobFilterSet(
        params,
        queryset=Job.objects.visible_to(request.user).select_related("tenant", "gpu_type", "owner"),
        request=request,
    )
    page = Paginator(filterset.qs, LIST_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"filter": filterset, "page": page, "live": any(not job.is_terminal for job in page)}
    if request.htmx and request.htmx.target == "job-rows":
        response = render(request, "jobs/job_list.html#rows", context)
        if not context["live"]:
            response.status_code = HTMX_STOP_POLLING
    else:
        response = render(request, "jobs/job_list.html", context)
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
def job_create(request: HttpRequest) -> HttpResponse:
    form = JobForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        job, _ = submission.submit(tenant=form.cleaned_data["tenant"], owner=request.user, spec=form.spec())
        messages.success(request, f"Job {job.name} submitted.")
        return redirect(job)
    return render(request, "jobs/job_form.html", {"form": form}, status=400 if form.errors else 200)


@login_required
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = visible_job(request, pk, with_queue_position=True)
    events = list(job.events.all())
    log = read_log(job, 0)
    context = {
        "job": job,
        "events": events,
        "log_text": log.text if log else "",
        "log_offset": log.next_offset if log else 0,
        "last_event_id": events[-1].pk if events else 0,
        **status_context(request, job),
    }
    return render(request, "jobs/job_detail.html", context)


def status_context(request: HttpRequest, job: Job) -> dict:
    return {"job": job, "may_cancel": job.can_cancel and job.may_cancel(request.user)}


@login_required
@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = visible_job(request, pk)
    if not job.may_cancel(request.user):
        raise PermissionDenied("Only the job's owner or a tenant admin can cancel it.")
    if job.cancel(request.user):
        messages.info(request, f"Cancelling {job.name}.")
    if request.htmx:
        return HttpResponse(status=204)
    return redirect(job)


@login_required
def job_log(request: HttpRequest, pk: int) -> HttpResponse:
    """The whole log as plain text, for download."""
    job = visible_job(request, pk)
    parts, offset = [], 0
    while (chunk := read_log(job, offset)) and chunk.text:
        parts.append(chunk.text)
        offset = chunk.next_offset
    response = HttpResponse("".join(parts), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="{job.name}-{job.pk}.log"'
    return response


def read_log(job: Job, offset: int):
    if job.cluster is None or not job.external_id:
        return None
    try:
        return job.cluster.adapter().logs(job, offset)
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


def stream_step(
    request: HttpRequest, job_id: int, last_event: int, log_offset: int, last_status: str
) -> tuple[list[str], int, int, str, bool]:
    """One look at the job: new events, a changed status (state, wait reason, queue position),
    new log text, and whether there is nothing left to learn."""
    job = (
        Job.objects.select_related("cluster", "gpu_type", "tenant", "owner")
        .with_queue_position()
        .get(pk=job_id)
    )
    out: list[str] = []
    events = list(JobEvent.objects.filter(job_id=job_id, pk__gt=last_event).order_by("pk")[:200])
    if events:
        last_event = events[-1].pk
        timeline = "".join(render_to_string("jobs/job_detail.html#event", {"event": e}) for e in events)
        out.append(sse_message("timeline", timeline, f"e{last_event}.l{log_offset}"))
    context = {**status_context(request, job), "streamed": True}
    status = render_to_string("jobs/job_detail.html#status", context, request=request)
    if status != last_status:
        out.append(sse_message("status", status, f"e{last_event}.l{log_offset}"))
    chunk = read_log(job, log_offset)
    if chunk and chunk.text:
        log_offset = chunk.next_offset
        out.append(sse_message("log", html.escape(chunk.text), f"e{last_event}.l{log_offset}"))
    log_done = chunk is None or chunk.complete
    done = job.is_terminal and not events and log_done
    return out, last_event, log_offset, status, done


async def job_stream(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    user = await request.auser()
    if not user.is_authenticated:
        return HttpResponse(status=401)
    if not await Job.objects.visible_to(user).filter(pk=pk).aexists():
        raise Http404
    last_event, log_offset = parse_cursor(request)
    step = sync_to_async(stream_step)
    interval = settings.FACTORY_STREAM_POLL_INTERVAL

    async def messages_():
        yield "retry: 2000\n\n"
        nonlocal last_event, log_offset
        idle, status = 0.0, ""
        while True:
            out, last_event, log_offset, status, done = await step(
                request, pk, last_event, log_offset, status
            )
            for message in out:
                yield message
            if done:
                yield sse_message("done", "finished", f"e{last_event}.l{log_offset}")
                return
            idle = 0.0 if out else idle + interval
            if idle >= 15:
                yield ": keep-alive\n\n"  # proxies close silent connections
                idle = 0.0
            await asyncio.sleep(interval)

    response = StreamingHttpResponse(messages_(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response

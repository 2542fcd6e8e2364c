"""The PromQL HTTP API (Prometheus, and what speaks it: VictoriaMetrics, Thanos, Mimir): instant and
range queries, and the quoting PromQL needs for the values the portal puts into a query.

The API is two endpoints and one JSON envelope, so requests (already used for the exporters) is all
it takes; the Python client libraries for it bring pandas and plotting along. Any failure (no
connection, no complete answer within the timeout, an error status, an answer that is not the
API's) is one exception, PrometheusUnavailable, whose text says what happened and never carries a
credential.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import requests

MAX_ANSWER_BYTES = 256 * 1024 * 1024
PARALLEL_QUERIES = 4
REGEX_SPECIALS = frozenset("\\.+*?()|[]{}^$")


class PrometheusUnavailable(Exception):
    """Prometheus gave no usable answer."""


@dataclasses.dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclasses.dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]


class PromQL:
    """One Prometheus, asked over one HTTP session. `queries` counts the requests made."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        verify: bool | str = True,
        cert: tuple[str, str] | str | None = None,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.queries = 0
        self._counting = threading.Lock()  # queries may be asked from several threads at once
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "aifactory-portal"
        self.session.headers["Accept"] = "application/json"
        if bearer_token:
            self.session.headers["Authorization"] = f"Bearer {bearer_token}"
        if basic_auth:
            self.session.auth = basic_auth
        # Given with each request: a session's own are overridden by REQUESTS_CA_BUNDLE.
        self.verify, self.cert = verify, cert or None

    def close(self) -> None:
        self.session.close()

    def query_all(self, exprs: list[str], at: datetime | float | None = None) -> list[list[Sample]]:
        """Several instant queries at once (Prometheus evaluates them in parallel), in order."""
        if len(exprs) <= 1:
            return [self.query(expr, at) for expr in exprs]
        with ThreadPoolExecutor(max_workers=min(PARALLEL_QUERIES, len(exprs))) as pool:
            return list(pool.map(lambda expr: self.query(expr, at), exprs))

    def query(self, expr: str, at: datetime | float | None = None) -> list[Sample]:
        """An instant query: one sample per series."""
        data = {"query": expr, "timeout": f"{self.timeout:g}s"}
        if at is not None:
            data["time"] = _unix(at)
        body = self._post("/api/v1/query", data)
        if body.get("resultType") != "vector":
            raise PrometheusUnavailable(f"answered a {body.get('resultType')!r}, not an instant vector")
        try:
            return [Sample(item["metric"], _number(item["value"][1])) for item in body["result"]]
        except (KeyError, IndexError, TypeError, ValueError):
            raise PrometheusUnavailable("answered with a result the PromQL API does not give") from None

    def query_range(
        self, expr: str, start: datetime | float, end: datetime | float, step: float
    ) -> list[Series]:
        data = {
            "query": expr,
            "start": _unix(start),
            "end": _unix(end),
            "step": f"{step:g}",
            "timeout": f"{self.timeout:g}s",
        }
        body = self._post("/api/v1/query_range", data)
        if body.get("resultType") != "matrix":
            raise PrometheusUnavailable(f"answered a {body.get('resultType')!r}, not a range vector")
        try:
            return [
                Series(item["metric"], [(float(t), _number(v)) for t, v in item["values"]])
                for item in body["result"]
            ]
        except (KeyError, IndexError, TypeError, ValueError):
            raise PrometheusUnavailable("answered with a result the PromQL API does not give") from None

    def _post(self, path: str, data: dict) -> dict:
        """POST (a query naming thousands of jobs does not fit in a URL), within `timeout` seconds
        in all: a server that trickles its answer is as unavailable as one that never answers."""
        with self._counting:
            self.queries += 1
        deadline = time.monotonic() + self.timeout
        try:
            with self.session.post(
                self.base + path,
                data=data,
                timeout=(self.timeout, self.timeout),
                allow_redirects=False,  # a redirect would carry the credentials elsewhere
                stream=True,
                verify=self.verify,
                cert=self.cert,
            ) as response:
                raw = _read(response, deadline, self.timeout)
                status = response.status_code
        except requests.Timeout:
            raise PrometheusUnavailable(f"no answer within {self.timeout:g} s") from None
        except requests.exceptions.SSLError as exc:
            raise PrometheusUnavailable(f"TLS failed: {_reason(exc)}") from None
        except requests.ConnectionError as exc:
            raise PrometheusUnavailable(f"connection failed: {_reason(exc)}") from None
        except requests.RequestException as exc:
            raise PrometheusUnavailable(str(exc)[:200] or type(exc).__name__) from None
        if 300 <= status < 400:
            raise PrometheusUnavailable(f"HTTP {status}: a redirect (give the address it points to)")
        try:
            body = json.loads(raw)
        except ValueError:
            raise PrometheusUnavailable(f"HTTP {status}: not an answer of the PromQL API") from None
        if not isinstance(body, dict):
            raise PrometheusUnavailable(f"HTTP {status}: not an answer of the PromQL API")
        if status != 200 or body.get("status") != "success":
            error = f"{body.get('errorType', '')}: {body.get('error', '')}".strip(": ")
            raise PrometheusUnavailable(f"HTTP {status}: {error or 'error'}"[:300])
        data = body.get("data")
        if not isinstance(data, dict):
            raise PrometheusUnavailable("answered without data")
        return data


def _read(response: requests.Response, deadline: float, timeout: float) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(1 << 20):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise PrometheusUnavailable(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        if time.monotonic() > deadline:
            raise PrometheusUnavailable(f"no complete answer within {timeout:g} s")
    return b"".join(chunks)


def _reason(exc: Exception) -> str:
    """The innermost cause, shortly: requests nests the socket's error several levels deep."""
    while exc.args and isinstance(exc.args[0], Exception):
        exc = exc.args[0]
    text = str(getattr(exc, "reason", "") or exc)
    for needle in (
        "Connection refused",
        "Name or service not known",
        "timed out",
        "certificate verify failed",
    ):
        if needle in text:
            return needle.lower()
    return text[:200]


def _unix(at: datetime | float) -> str:
    seconds = at.timestamp() if isinstance(at, datetime) else float(at)
    return f"{seconds:.3f}"


def _number(text: str) -> float:
    return float(text)  # "NaN", "+Inf" and "-Inf" included


def finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and not math.isinf(value)


# --- building queries ---------------------------------------------------------------------------


def string(value: str) -> str:
    """A PromQL string literal. PromQL reads Go's escapes, of which JSON's are a subset; non-ASCII
    stays as it is (a JSON surrogate pair is not a Go escape)."""
    return json.dumps(value, ensure_ascii=False)


def regex_literal(value: str) -> str:
    """`value` matched literally inside a PromQL regular expression (RE2 syntax)."""
    return "".join(f"\\{c}" if c in REGEX_SPECIALS else c for c in value)


def any_of(values: Iterable[str]) -> str:
    """A regular expression matching exactly one of `values` (Prometheus anchors it)."""
    return "|".join(regex_literal(v) for v in sorted(set(values)))


def selector(
    metric: str = "", labels: dict[str, str] | None = None, regexes: dict[str, str] | None = None
) -> str:
    """`metric{name="value", …, name=~"regex"}`: equality for `labels`, regular expressions for
    `regexes` (a metric's name may be one of them, `__name__`)."""
    parts = [f"{name}={string(value)}" for name, value in sorted((labels or {}).items())]
    parts += [f"{name}=~{string(regex)}" for name, regex in (regexes or {}).items()]
    inside = ", ".join(parts)
    return f"{metric}{{{inside}}}" if inside or not metric else metric


def duration(seconds: float) -> str:
    """A range in whole milliseconds, at least one."""
    return f"{max(1, math.ceil(seconds * 1000))}ms"


def either(terms: list[str]) -> str:
    """`a or b or …` nested as a balanced tree: Prometheus evaluates a chain of `or` in time
    quadratic in its length, a tree in n log n."""
    if len(terms) == 1:
        return terms[0]
    middle = len(terms) // 2
    return f"({either(terms[:middle])} or {either(terms[middle:])})"

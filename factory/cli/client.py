"""The portal's public API as the command line tool uses it: one session, a token, clear errors."""

from __future__ import annotations

import json
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

TIMEOUT = (5, 30)  # connect, read (seconds)
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "rejected"})


class CliError(Exception):
    """A failure to show the user in one or a few lines, with the exit code to end with."""

    def __init__(self, message: str, *, code: int = 1, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details or []


@dataclass
class Config:
    url: str = ""
    token: str = ""


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "factory" / "config.json"


def load_config() -> Config:
    """The stored login, overridden by FACTORY_URL and FACTORY_TOKEN."""
    config = Config()
    path = config_path()
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {path}: {exc}") from None
        config = Config(url=str(data.get("url", "")), token=str(data.get("token", "")))
    return Config(
        url=os.environ.get("FACTORY_URL") or config.url,
        token=os.environ.get("FACTORY_TOKEN") or config.token,
    )


def save_config(config: Config) -> Path:
    """Write the login readable by its owner only: the directory 0700, the file 0600, made so
    from the start (never world-readable, even for a moment)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"url": config.url, "token": config.token}, out)
    os.chmod(draft, stat.S_IRUSR | stat.S_IWUSR)
    os.replace(draft, path)
    return path


class Client:
    def __init__(self, config: Config) -> None:
        if not config.url:
            raise CliError("no portal to talk to: run `factory login URL` or set FACTORY_URL", code=2)
        self.base = config.url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        if config.token:
            self.session.headers["Authorization"] = f"Token {config.token}"

    # --- the API --------------------------------------------------------------------------------

    def issue_token(self, username: str, password: str, name: str) -> dict:
        return self.request(
            "POST", "/api/v1/auth/token/", json={"username": username, "password": password, "name": name}
        )

    def tenants(self) -> list[dict]:
        return self.request("GET", "/api/v1/tenants/")["results"]

    def submit(self, spec: dict, idempotency_key: str | None = None) -> dict:
        # A retried submission (a timeout, a dropped connection) returns the first job, never a second.
        key = idempotency_key or str(uuid.uuid4())
        return self.request("POST", "/api/v1/jobs/", json=spec, headers={"Idempotency-Key": key}, retries=2)

    def jobs(self, params: dict[str, Any], limit: int) -> list[dict]:
        return self.paged("/api/v1/jobs/", params, limit)

    def fleet(self, cluster: str, listing: str, params: dict[str, Any], limit: int) -> list[dict]:
        """One of a cluster's fleet lists: `gpus` or `health-events`."""
        return self.paged(
            f"/api/v1/clusters/{cluster}/{listing}/",
            params,
            limit,
            not_found=f"no cluster {cluster} whose fleet you can see",
        )

    def paged(
        self, path: str, params: dict[str, Any], limit: int, not_found: str = "not found"
    ) -> list[dict]:
        """Up to `limit` results of a list, page after page."""
        found: list[dict] = []
        page = self.request("GET", path, params=params, not_found=not_found)
        while True:
            found += page["results"]
            if len(found) >= limit or not page.get("next"):
                return found[:limit]
            page = self.request("GET", page["next"], not_found=not_found)

    def job(self, job_id: int) -> dict:
        return self.request("GET", f"/api/v1/jobs/{job_id}/", not_found=f"no job {job_id} that you can see")

    def cancel(self, job_id: int) -> dict:
        return self.request(
            "POST", f"/api/v1/jobs/{job_id}/cancel/", not_found=f"no job {job_id} that you can see"
        )

    def array(self, array_id: int) -> dict:
        return self.request(
            "GET", f"/api/v1/arrays/{array_id}/", not_found=f"no array {array_id} that you can see"
        )

    def cancel_array(self, array_id: int) -> dict:
        return self.request(
            "POST", f"/api/v1/arrays/{array_id}/cancel/", not_found=f"no array {array_id} that you can see"
        )

    def logs(self, job_id: int, offset: int) -> dict:
        return self.request(
            "GET",
            f"/api/v1/jobs/{job_id}/logs/",
            params={"offset": offset},
            not_found=f"no job {job_id} that you can see",
            retries=2,
        )

    # --- the wire -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        not_found: str = "not found",
        retries: int = 0,
        **kwargs,
    ) -> Any:
        url = path if path.startswith(("http://", "https://")) else f"{self.base}{path}"
        for attempt in range(retries + 1):
            try:
                response = self.session.request(method, url, timeout=TIMEOUT, **kwargs)
                break
            except requests.ConnectionError:
                if attempt == retries:
                    raise CliError(f"cannot reach the portal at {self.base}") from None
            except requests.Timeout:
                if attempt == retries:
                    raise CliError(f"the portal at {self.base} did not answer in time") from None
        return self.answer(response, not_found)

    def answer(self, response: requests.Response, not_found: str) -> Any:
        if response.status_code < 400:
            return response.json() if response.content else {}
        body = _json_or_none(response)
        detail = body.get("detail") if isinstance(body, dict) else None
        if response.status_code == 401:
            raise CliError("not signed in, or the token expired or was revoked: run `factory login`")
        if response.status_code == 404:
            raise CliError(not_found)
        if response.status_code == 429:
            raise CliError(str(detail or "too many requests: try again later"))
        if response.status_code in (400, 413) and isinstance(body, dict) and detail is None:
            raise CliError("the portal refused the request:", code=2, details=field_errors(body))
        if detail:
            raise CliError(str(detail))
        raise CliError(f"the portal answered {response.status_code} {response.reason}")


def field_errors(body: dict, prefix: str = "") -> list[str]:
    """DRF's per-field errors ({"gpu_count": ["..."], "env": {"X": [...]}}) as `field: message` lines."""
    lines = []
    for field, errors in body.items():
        name = f"{prefix}{field}"
        if isinstance(errors, dict):
            lines += field_errors(errors, f"{name}.")
        elif isinstance(errors, list):
            lines += [f"{name}: {e}" for e in errors if not isinstance(e, dict | list)]
            for item in errors:
                if isinstance(item, dict):
                    lines += field_errors(item, f"{name}.")
        else:
            lines.append(f"{name}: {errors}")
    return lines


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None

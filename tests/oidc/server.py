"""A real OpenID provider for the tests (tests/oidc/provider.mjs on node's oidc-provider, installed
by scripts/test-services), and a proxy in front of it that can replace the ID token in the token
endpoint's answer, so that a test runs the whole flow with a token it made."""

from __future__ import annotations

import base64
import copy
import http.client
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

PROVIDER_DIR = Path(__file__).resolve().parent
CLIENT_ID = "factory-portal"
CLIENT_SECRET = "test-only-client-secret-of-the-portal"

# The people of the tests' identity provider by subject (what they type in its development login
# form), with the claims it releases about them.
ALICE = "5f0c2a9e"
BOB = "9d41b7c3"
ACCOUNTS = {
    ALICE: {
        "preferred_username": "alice",
        "name": "Alice Liddell",
        "given_name": "Alice",
        "family_name": "Liddell",
        "email": "alice@lab-x.example.org",
        "email_verified": True,
        "groups": ["gpu-lab-x-admins", "staff"],
        "posix_username": "aif-alice",
    },
    BOB: {
        "preferred_username": "bob",
        "name": "Bob Builder",
        "email": "bob@lab-y.example.org",
        "groups": ["gpu-lab-y-users"],
        "posix_username": "aif-bob",
    },
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signing_key(kid: str | None = None) -> RSAKey:
    return RSAKey.generate_key(
        2048, parameters={"kid": kid or uuid.uuid4().hex, "use": "sig", "alg": "RS256"}, private=True
    )


def unverified_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class OidcProvider:
    """tests/oidc/provider.mjs in a process of its own, on a free port, with a new RS256 key, the
    portal as a confidential client (PKCE required) and ACCOUNTS."""

    def __init__(
        self, workdir: Path, *, portal_url: str, issuer: str | None = None, rp_initiated_logout: bool = True
    ) -> None:
        self.workdir = workdir
        self.rp_initiated_logout = rp_initiated_logout
        self.port = free_port()
        self.issuer = issuer or f"http://127.0.0.1:{self.port}"
        self.key = signing_key()
        self.accounts = copy.deepcopy(ACCOUNTS)
        self.portal_url = portal_url.rstrip("/")
        self.config_path = workdir / "oidc-provider.json"
        self.log_path = workdir / "oidc-provider.log"
        self.proc: subprocess.Popen | None = None

    @property
    def redirect_uri(self) -> str:
        return f"{self.portal_url}/oidc/callback/"

    def write_config(self) -> None:
        config = {
            "issuer": self.issuer,
            "port": self.port,
            "keys": [self.key.as_dict(private=True)],
            "clients": [
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "redirect_uris": [self.redirect_uri],
                    "post_logout_redirect_uris": [f"{self.portal_url}/login/"],
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                }
            ],
            "accounts": self.accounts,
            "rpInitiatedLogout": self.rp_initiated_logout,
        }
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config))
        tmp.replace(self.config_path)  # the provider re-reads it: never half written

    def reset_accounts(self) -> None:
        self.accounts = copy.deepcopy(ACCOUNTS)
        self.write_config()

    def set_groups(self, sub: str, groups: list[str]) -> None:
        self.accounts[sub]["groups"] = groups
        self.write_config()

    def set_claim(self, sub: str, claim: str, value) -> None:
        self.accounts[sub][claim] = value
        self.write_config()

    def start(self) -> None:
        self.write_config()
        log = open(self.log_path, "w")  # noqa: SIM115 - kept open for the process's lifetime
        self.proc = subprocess.Popen(
            ["node", str(PROVIDER_DIR / "provider.mjs"), str(self.config_path)],
            cwd=PROVIDER_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while f"listening on {self.port}" not in self.log():
            assert self.proc.poll() is None, f"the OpenID provider exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"the OpenID provider did not start:\n{self.log()}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def sign(self, claims: dict, key: RSAKey | None = None) -> str:
        """An ID token with `claims`, signed with the provider's key (or `key`)."""
        key = key or self.key
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)

    def settings(self) -> dict:
        """The portal's settings for this provider."""
        return {
            "FACTORY_OIDC_ISSUER": self.issuer,
            "FACTORY_OIDC_CLIENT_ID": CLIENT_ID,
            "FACTORY_OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "FACTORY_OIDC_SCOPES": ["openid", "profile", "email", "groups", "posix"],
            "FACTORY_OIDC_POSIX_CLAIM": "posix_username",
        }


class _ProxyHandler(BaseHTTPRequestHandler):
    server: TokenProxy

    def log_message(self, format, *args) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"connection", "keep-alive"}}
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        content = answer.read()
        replace = self.server.replace_id_token
        if urlsplit(self.path).path == "/token" and answer.status == 200 and replace is not None:
            token = json.loads(content)
            token["id_token"] = replace(unverified_claims(token["id_token"]))
            content = json.dumps(token).encode()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in {"content-length", "connection", "transfer-encoding", "keep-alive"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
        upstream.close()

    do_GET = do_POST = _forward


class TokenProxy(ThreadingHTTPServer):
    """Forwards everything to the provider; with `replace_id_token` set, the token endpoint's
    ID token becomes what that function makes of the real one's claims."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = 0
        self.replace_id_token: Callable[[dict], str] | None = None
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def sign_in_at_provider(
    authorize_url: str, sub: str, portal_url: str, browser: requests.Session | None = None
) -> str:
    """What a person does at the provider (its development login form), with `requests` as the
    browser: returns the URL the provider sends them back to, on the portal."""
    browser = browser or requests.Session()
    url = authorize_url
    response = browser.get(url, allow_redirects=False, timeout=10)
    for _ in range(10):
        if response.is_redirect:
            url = urljoin(url, response.headers["Location"])
            if url.startswith(portal_url):
                return url
            response = browser.get(url, allow_redirects=False, timeout=10)
        elif response.status_code == 200 and 'name="login"' in response.text:
            action = response.text.split('action="', 1)[1].split('"', 1)[0]
            url = urljoin(url, action)
            form = {"prompt": "login", "login": sub, "password": "any"}
            response = browser.post(url, data=form, allow_redirects=False, timeout=10)
        else:
            raise AssertionError(
                f"unexpected answer from the provider: {response.status_code} {response.text}"
            )
    raise AssertionError("the provider never sent the browser back to the portal")

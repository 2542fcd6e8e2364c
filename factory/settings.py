"""One settings module, driven by environment variables.

With nothing set it runs on SQLite, an embedded (filesystem) Celery transport and the `local`
backend, which is what `make run` uses. `DATABASE_URL`, `REDIS_URL`/`CELERY_BROKER_URL` switch to
PostgreSQL and Redis. Secrets may also come from `<NAME>_FILE`. Bad values fail loudly at start.
"""

from __future__ import annotations

import os
import re
import tempfile
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from factory.queues import BACKEND_QUEUES, QUEUES

BASE_DIR = Path(__file__).resolve().parent.parent
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def env(name: str, default: str | None = None) -> str | None:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text().strip()
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = env(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = env(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def env_float(name: str, default: float) -> float:
    value = env(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in (env(name) or default).split(",") if item.strip()]


def private_dir(path: Path) -> None:
    """Create `path` for this user alone, and make it so again if it is ours but open to others:
    it holds the database, the broker's messages and the local backend's state, and jobs run on
    this host."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        path.chmod(0o700)


DEBUG = env_bool("DEBUG", False)
VAR_DIR = Path(env("FACTORY_VAR_DIR") or BASE_DIR / "var")

SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"


def weak_secret_key(key: str) -> str | None:
    """Why `key` is too weak to sign sessions and derive the sealing key, or None (Django's own
    measure, from `check --deploy`: 50 characters, 5 different ones, not a generated dev key)."""
    if len(key) < 50:
        return f"it has {len(key)} characters, at least 50 are needed"
    if len(set(key)) < 5:
        return "it repeats fewer than 5 different characters"
    if key.startswith("django-insecure-"):
        return "it is a development key (django-insecure-…)"
    return None


if not DEBUG and (weakness := weak_secret_key(SECRET_KEY)):
    raise ImproperlyConfigured(
        f"SECRET_KEY is too weak: {weakness} (make one with: python -c 'import secrets; "
        "print(secrets.token_urlsafe(50))')"
    )
# Fernet keys that seal job secrets at rest, newest first: the first seals, all of them open (so a
# key is rotated by putting a new one first, running `manage.py reseal_job_secrets`, then dropping
# the old one). Without any, a key is derived from SECRET_KEY.
FACTORY_SECRET_KEYS = env_list("FACTORY_SECRET_KEYS")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
# With DEBUG on, an error page shows settings and source: never to anyone but this machine.
LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1", ".localhost", "testserver"}
if DEBUG and (public := [host for host in ALLOWED_HOSTS if host not in LOCAL_HOSTS]):
    raise ImproperlyConfigured(
        f"DEBUG is on while ALLOWED_HOSTS names public hosts ({', '.join(public)}): turn DEBUG off"
    )
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_NAME = env("SITE_NAME", "AI Factory")

INSTALLED_APPS = [
    "factory.apps.PortalAdminConfig",  # django.contrib.admin, for platform roles rather than is_staff
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "axes",
    # The audit trail (factory.audit): one table of every administrative change, before → after.
    "auditlog",
    "factory",
    "jobs",
    "quotas",
    "billing",
    "platform_config",
    "fleet",
]

MIDDLEWARE = [
    # /healthz and /readyz: before host checks, the HTTPS redirect and sessions (factory.health).
    "factory.health.HealthCheckMiddleware",
    # The client's address behind the proxy, before anything counts by it.
    "factory.middleware.ForwardedClientMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Changes made while answering are the signed-in user's, in the audit trail.
    "factory.audit.AuditContextMiddleware",
    # Before anything reads the body: only a signed-in client may send a large one.
    "factory.middleware.RequestBodyLimitMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a sign-in refused for a lockout into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "factory.urls"
ASGI_APPLICATION = "factory.asgi.application"
WSGI_APPLICATION = "factory.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "factory.context_processors.site",
                "factory.context_processors.roles",
                "billing.context_processors.billing",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'factory.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    private_dir(VAR_DIR)
    # The web server, worker and scheduler share one file: wait for locks instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_int("DB_POOL_MAX_SIZE", 8) > 0:
    # Under ASGI every request runs in a new thread, and Django's connections are per thread:
    # without a pool each request opens a PostgreSQL connection (and CONN_MAX_AGE leaks them).
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DB_POOL_MIN_SIZE", 1),
        "max_size": env_int("DB_POOL_MAX_SIZE", 8),
        "timeout": env_float("DB_POOL_TIMEOUT", 10.0),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-axes first: it refuses a locked-out sign-in before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "jobs:list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# collectstatic writes here (the image collects them at build, outside VAR_DIR).
STATIC_ROOT = Path(env("STATIC_ROOT") or VAR_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Security (production unless DEBUG) ---------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

# --- Sign-in and API tokens ---------------------------------------------------------------------
# Failed sign-ins on the login page, the admin's and the API token endpoint are counted by
# django-axes (in the database: the same on every machine, with or without Redis, and shown in the
# admin) per username and client address together. A lockout hits the attacked account from that
# address, not every user behind the same address (a lab's users often share one), and the same
# account from elsewhere still signs in. The client address is REMOTE_ADDR: behind the proxy,
# factory.middleware puts the forwarded client there for the proxies in FORWARDED_ALLOW_IPS
# (comma-separated addresses or networks, `*` for any), and a client's own X-Forwarded-For is never
# believed.
FORWARDED_ALLOW_IPS = env("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)
AXES_FAILURE_LIMIT = env_int("FACTORY_SIGNIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("FACTORY_SIGNIN_LOCKOUT_MINUTES", 15.0))
AXES_RESET_ON_SUCCESS = True
# Failures are kept while they count; a row for every successful sign-in would only grow.
AXES_DISABLE_ACCESS_LOG = True
AXES_LOCKOUT_CALLABLE = "factory.views.locked_out"
AXES_COOLOFF_MESSAGE = (
    "Too many failed sign-ins: this account is locked from your address for "
    f"{AXES_COOLOFF_TIME.total_seconds() / 60:g} minutes. A platform admin can unlock it sooner."
)
# API tokens: kept as SHA-256 digests, shown once, FACTORY_TOKEN_DAYS long unless asked otherwise
# (up to FACTORY_TOKEN_MAX_DAYS).
FACTORY_TOKEN_DAYS = env_int("FACTORY_TOKEN_DAYS", 90)
FACTORY_TOKEN_MAX_DAYS = env_int("FACTORY_TOKEN_MAX_DAYS", 365)
if not 1 <= FACTORY_TOKEN_DAYS <= FACTORY_TOKEN_MAX_DAYS:
    raise ImproperlyConfigured("FACTORY_TOKEN_DAYS must be between 1 and FACTORY_TOKEN_MAX_DAYS")
# Seconds an API token's user is remembered per web process (factory/api/authentication.py).
FACTORY_TOKEN_CACHE_SECONDS = env_float("FACTORY_TOKEN_CACHE_SECONDS", 10.0)

# --- Audit trail (django-auditlog; factory/audit.py) -----------------------------------------
# Changes as JSON (null is null, 4 is 4), related objects by name ("demo-lab", not 17).
AUDITLOG_STORE_JSON_CHANGES = True
AUDITLOG_USE_FK_STRING_REPRESENTATION = True
# Entries per page of /audit/.
FACTORY_AUDIT_PAGE_SIZE = env_int("FACTORY_AUDIT_PAGE_SIZE", 50)

# --- Single sign-on (OpenID Connect) ---------------------------------------------------------
# With an issuer, the login page offers sign-in through the site's identity provider (authorization
# code flow with PKCE; factory/sso.py); without one it has the local form only. Local accounts
# always sign in with their password: break-glass admins, and `make run`'s demo.
FACTORY_OIDC_ISSUER = (env("FACTORY_OIDC_ISSUER") or "").rstrip("/")
FACTORY_OIDC_CLIENT_ID = env("FACTORY_OIDC_CLIENT_ID", "")
FACTORY_OIDC_CLIENT_SECRET = env("FACTORY_OIDC_CLIENT_SECRET", "")
FACTORY_OIDC_SCOPES = env_list("FACTORY_OIDC_SCOPES", "openid,profile,email")
# Which claims name the user here (at creation), give their POSIX account (empty: none does) and
# their groups (for the mapping rules).
FACTORY_OIDC_USERNAME_CLAIM = env("FACTORY_OIDC_USERNAME_CLAIM", "preferred_username")
FACTORY_OIDC_POSIX_CLAIM = env("FACTORY_OIDC_POSIX_CLAIM", "")
FACTORY_OIDC_GROUPS_CLAIM = env("FACTORY_OIDC_GROUPS_CLAIM", "groups")
FACTORY_OIDC_LABEL = env("FACTORY_OIDC_LABEL", "Sign in with your institution")
# Seconds the portal waits for the provider (discovery, keys, tokens) before saying it is down.
FACTORY_OIDC_TIMEOUT = env_float("FACTORY_OIDC_TIMEOUT", 5.0)
if FACTORY_OIDC_ISSUER:
    if not FACTORY_OIDC_CLIENT_ID:
        raise ImproperlyConfigured("FACTORY_OIDC_CLIENT_ID must be set with FACTORY_OIDC_ISSUER")
    if "openid" not in FACTORY_OIDC_SCOPES:
        raise ImproperlyConfigured("FACTORY_OIDC_SCOPES must include openid")
    _issuer = urlsplit(FACTORY_OIDC_ISSUER)
    # Plain HTTP only to this machine (a provider for development and the tests).
    if not (_issuer.scheme == "https" or (_issuer.scheme == "http" and _issuer.hostname in LOOPBACK)):
        raise ImproperlyConfigured("FACTORY_OIDC_ISSUER must be an https:// URL")

# --- Request bodies -----------------------------------------------------------------------------
# A request that is not signed in (no session, no valid API token) may send a small body: enough
# for a sign-in form. A signed-in one up to DATA_UPLOAD_MAX_MEMORY_SIZE (a job spec carries a
# command of up to 64 KiB, escaped in JSON). Larger bodies are refused with 413 before they are
# read: by the proxy past FACTORY_MAX_BODY_BYTES (client_max_body_size), and by factory.middleware
# from Content-Length and the credentials a request carries.
FACTORY_ANONYMOUS_MAX_BODY_BYTES = env_int("FACTORY_ANONYMOUS_MAX_BODY_BYTES", 16 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("FACTORY_MAX_BODY_BYTES", 1024 * 1024)
# Django's form and file parsing hold no more than that in memory either.
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE
if not 0 < FACTORY_ANONYMOUS_MAX_BODY_BYTES <= DATA_UPLOAD_MAX_MEMORY_SIZE:
    raise ImproperlyConfigured(
        "FACTORY_ANONYMOUS_MAX_BODY_BYTES must be between 1 and FACTORY_MAX_BODY_BYTES"
    )

# --- REST API ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "factory.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "factory.api.pagination.CursorPagination",
    "DEFAULT_SCHEMA_CLASS": "factory.api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "factory.api.exceptions.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_RATES": {"token": "20/min"},
    # Throttles count by REMOTE_ADDR: a client's own X-Forwarded-For would let it pick its count.
    "NUM_PROXIES": 0,
}
SPECTACULAR_SETTINGS = {
    "TITLE": f"{SITE_NAME} API",
    "DESCRIPTION": "Submit and follow GPU jobs; manage tenants, clusters and GPU types.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from the installed sidecar package, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# --- Celery -----------------------------------------------------------------------------------
REDIS_URL = env("REDIS_URL")
CELERY_BROKER_URL = env("CELERY_BROKER_URL") or REDIS_URL or "filesystem://"
CELERY_BROKER_DIR = VAR_DIR / "celery-broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Embedded transport for a bare machine: producer and worker share one folder, polled often.
    private_dir(VAR_DIR)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
else:
    # acks_late tasks are redelivered after this long if a worker died holding them.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 600)}
CELERY_TASK_IGNORE_RESULT = True
# No result backend, so no results to clean up (and no daily cleanup task in the schedule).
CELERY_RESULT_EXPIRES = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# One scheduler at a time on Redis (celery-redbeat): the beat that holds the lock in Redis sends the
# periodic tasks and renews the lock every tick; a standby beat waits for the lock and takes over
# within FACTORY_BEAT_LOCK_TIMEOUT + CELERY_BEAT_MAX_LOOP_INTERVAL seconds of the active one dying.
# The schedule's state lives in Redis too, so the standby carries on where the other left off.
# Without Redis (`make run`), beat keeps its schedule in a file and there is no standby.
CELERY_BEAT_MAX_LOOP_INTERVAL = env_float("FACTORY_BEAT_TICK", 5.0)
if not CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BEAT_SCHEDULER = "redbeat.RedBeatScheduler"
    CELERY_REDBEAT_REDIS_URL = env("CELERY_REDBEAT_REDIS_URL") or CELERY_BROKER_URL
    CELERY_REDBEAT_REDIS_OPTIONS = {"socket_connect_timeout": 5, "socket_timeout": 5}
    CELERY_REDBEAT_KEY_PREFIX = env("CELERY_REDBEAT_KEY_PREFIX", "factory:beat:")
    CELERY_REDBEAT_LOCK_TIMEOUT = env_int("FACTORY_BEAT_LOCK_TIMEOUT", 30)
    if CELERY_REDBEAT_LOCK_TIMEOUT <= 2 * CELERY_BEAT_MAX_LOOP_INTERVAL:
        raise ImproperlyConfigured("FACTORY_BEAT_LOCK_TIMEOUT must be over twice FACTORY_BEAT_TICK")
# Celery's Django fix-up would close the whole connection pool after every task (a new PostgreSQL
# connection per task); factory.celery returns connections to the pool after each task instead.
CELERY_DB_REUSE_MAX = 1_000_000

# Queues per purpose, each served by workers of its own (scripts/run starts one per queue): the
# tasks that act on one cluster go to its kind's queue (factory.routing), so a backend that hangs
# holds up its own kind's workers only, never another kind's dispatch, admission or metering.
FACTORY_BACKEND_QUEUES = BACKEND_QUEUES
FACTORY_QUEUES = QUEUES
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = [
    "factory.routing.by_cluster_kind",
    {
        "quotas.tasks.admit_pending": {"queue": "admission"},
        "billing.tasks.meter": {"queue": "metering"},
        "billing.tasks.meter_all_finished": {"queue": "metering"},
        "jobs.tasks.notify_job_event": {"queue": "notifications"},
        "jobs.tasks.deliver_notification": {"queue": "notifications"},
        "jobs.tasks.sweep_notifications": {"queue": "notifications"},
    },
]
# Every task has a soft time limit (it is told, and stops cleanly) and a hard one (its process is
# killed) FACTORY_TASK_KILL_GRACE seconds later. Tasks that call a backend get
# FACTORY_BACKEND_TASK_TIME_LIMIT, which must end before a dispatcher's lease
# (FACTORY_DISPATCH_LEASE) does, so that no two dispatchers ever hold the same job; the others
# FACTORY_TASK_TIME_LIMIT.
FACTORY_TASK_TIME_LIMIT = env_float("FACTORY_TASK_TIME_LIMIT", 120.0)
FACTORY_BACKEND_TASK_TIME_LIMIT = env_float("FACTORY_BACKEND_TASK_TIME_LIMIT", 240.0)
FACTORY_TASK_KILL_GRACE = env_float("FACTORY_TASK_KILL_GRACE", 30.0)
CELERY_TASK_SOFT_TIME_LIMIT = FACTORY_TASK_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = FACTORY_TASK_TIME_LIMIT + FACTORY_TASK_KILL_GRACE

# --- Cache ------------------------------------------------------------------------------------
# Shared by every web process: throttle counters (the token endpoint's) and short-lived state. In
# Redis when there is one: CACHE_URL, or REDIS_URL's database under KEY_PREFIX; clearing the cache
# then deletes its own keys only, never the Celery broker's, and a Redis that cannot be reached is
# a miss, not an error (factory.cache). Without Redis (`make run`), files in var/cache, shared by
# the processes of one machine.
CACHE_URL = env("CACHE_URL") or REDIS_URL
if CACHE_URL:
    CACHES = {
        "default": {
            "BACKEND": "factory.cache.PrefixedRedisCache",
            "LOCATION": CACHE_URL,
            "KEY_PREFIX": env("CACHE_KEY_PREFIX", "factory"),
            # A cache slower than the database is no use: give up on a Redis that does not answer.
            "OPTIONS": {"socket_connect_timeout": 1.0, "socket_timeout": 1.0},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# --- The factory ------------------------------------------------------------------------------
# How often the scheduler syncs every cluster's active jobs and sweeps stalled work (seconds).
FACTORY_SYNC_INTERVAL = env_float("FACTORY_SYNC_INTERVAL", 3.0)
# An admitted job whose dispatch did not report back within this many seconds is dispatched again
# (dispatch is idempotent, so this is safe).
FACTORY_DISPATCH_STALE_AFTER = env_float("FACTORY_DISPATCH_STALE_AFTER", 30.0)
# How long a dispatcher's claim on the jobs it submits lasts (longer than a batch's backend calls
# take, each bounded by its adapter's timeout); another dispatcher takes over only after it.
FACTORY_DISPATCH_LEASE = env_float("FACTORY_DISPATCH_LEASE", 300.0)
if FACTORY_BACKEND_TASK_TIME_LIMIT + FACTORY_TASK_KILL_GRACE >= FACTORY_DISPATCH_LEASE:
    raise ImproperlyConfigured(
        "FACTORY_BACKEND_TASK_TIME_LIMIT + FACTORY_TASK_KILL_GRACE must be under FACTORY_DISPATCH_LEASE"
    )
# Unexpected dispatch errors of one attempt before the job fails (as a platform fault, unbilled).
FACTORY_DISPATCH_MAX_FAILURES = env_int("FACTORY_DISPATCH_MAX_FAILURES", 5)
# Admitted jobs go to the workers in dispatch tasks of up to this many jobs each; a smaller burst
# is still split over this many tasks, so that several worker processes take part.
FACTORY_DISPATCH_BATCH = env_int("FACTORY_DISPATCH_BATCH", 16)
FACTORY_DISPATCH_SPREAD = env_int("FACTORY_DISPATCH_SPREAD", 4)
# The most tasks one submission of an array or a sweep may make.
FACTORY_MAX_ARRAY_TASKS = env_int("FACTORY_MAX_ARRAY_TASKS", 10_000)
if FACTORY_MAX_ARRAY_TASKS < 1:
    raise ImproperlyConfigured("FACTORY_MAX_ARRAY_TASKS must be at least 1")
# The local backend runs jobs on the portal's own host, next to its database and secrets: it runs
# only with DEBUG on, or with this set on a host given over to it.
FACTORY_ALLOW_LOCAL_BACKEND = env_bool("FACTORY_ALLOW_LOCAL_BACKEND", False)
# Where the local backend keeps its per-job state, logs and GPU slot table (private to the worker).
FACTORY_LOCAL_BACKEND_ROOT = Path(env("FACTORY_LOCAL_BACKEND_ROOT") or VAR_DIR / "local-backend")
# The local jobs' working directories (their HOME): a directory each, reachable by the user jobs run
# as, so not under VAR_DIR, which no one else may enter.
FACTORY_LOCAL_WORK_ROOT = Path(
    env("FACTORY_LOCAL_WORK_ROOT") or Path(tempfile.gettempdir()) / f"factory-local-work-{os.geteuid()}"
)
# The user local jobs run as when the worker runs as root (never root itself).
FACTORY_LOCAL_RUN_AS = env("FACTORY_LOCAL_RUN_AS", "aif-local")
# Per-job directories (scripts, logs) of Slurm jobs; must be on storage the compute nodes share.
FACTORY_SLURM_JOB_ROOT = Path(env("FACTORY_SLURM_JOB_ROOT") or VAR_DIR / "slurm-jobs")
# Seconds between health checks of every cluster (shown to admins with each pool's capacity).
FACTORY_HEALTH_INTERVAL = env_float("FACTORY_HEALTH_INTERVAL", 30.0)
# Open job pages (jobs/live.py). On PostgreSQL an event wakes its page at once (LISTEN/NOTIFY);
# what changes without an event (queue position, run time) is checked every REFRESH_INTERVAL
# seconds, in one query per web process. Every POLL_INTERVAL seconds a running job's log is read, and
# on SQLite that one query polls for events. THREADS: threads per web process that the pages' short
# database reads share (none is held by an open page).
FACTORY_STREAM_POLL_INTERVAL = env_float("FACTORY_STREAM_POLL_INTERVAL", 0.5)
FACTORY_STREAM_REFRESH_INTERVAL = env_float("FACTORY_STREAM_REFRESH_INTERVAL", 2.0)
FACTORY_STREAM_THREADS = env_int("FACTORY_STREAM_THREADS", 2)

# Where admission asks about prices and money spent, for hard money budgets (quotas never imports
# the app above it).
FACTORY_BILLING_HOOKS = env("FACTORY_BILLING_HOOKS", "billing.budgeting")
# Who bills: the provider, publisher and invoice issuer named in FOCUS exports and on invoices.
FACTORY_BILLING_ISSUER = env("FACTORY_BILLING_ISSUER", "AI Factory")
# The currency a billing account is billed in unless finance sets its own: only prices in an
# account's currency bill its usage, so no bill or total ever mixes currencies.
FACTORY_BILLING_CURRENCY = env("FACTORY_BILLING_CURRENCY", "EUR")
if not re.fullmatch(r"[A-Z]{3}", FACTORY_BILLING_CURRENCY or ""):
    raise ImproperlyConfigured("FACTORY_BILLING_CURRENCY is a three-letter ISO 4217 code, e.g. EUR")
# How long closing a month waits for metering in flight before it gives up, changing nothing.
FACTORY_CLOSE_LOCK_TIMEOUT = env_float("FACTORY_CLOSE_LOCK_TIMEOUT", 30.0)
# Metering's safety net (a release whose metering was lost): every FACTORY_METERING_INTERVAL it
# looks at the jobs whose state changed within FACTORY_METERING_LOOKBACK seconds, and every
# FACTORY_METERING_FULL_INTERVAL at all ended jobs, however old.
FACTORY_METERING_LOOKBACK = env_float("FACTORY_METERING_LOOKBACK", 86400.0)


# GPU telemetry (fleet/): each node's GPU exporter is scraped every FACTORY_TELEMETRY_INTERVAL
# seconds unless its cluster says otherwise, at most FACTORY_TELEMETRY_CONCURRENCY at once, each
# within FACTORY_TELEMETRY_TIMEOUT seconds; minute rollups are kept FACTORY_TELEMETRY_RETENTION_DAYS.
# FACTORY_GPU_HEALTH_RULES is a JSON object overriding fleet.rules.DEFAULT_RULES key by key.
FACTORY_TELEMETRY_INTERVAL = env_float("FACTORY_TELEMETRY_INTERVAL", 10.0)
FACTORY_TELEMETRY_TICK = env_float("FACTORY_TELEMETRY_TICK", 5.0)
FACTORY_TELEMETRY_CONCURRENCY = env_int("FACTORY_TELEMETRY_CONCURRENCY", 32)
# A cluster's cycle is one task per shard of this many nodes, run by whichever workers are free.
FACTORY_TELEMETRY_SHARD_NODES = env_int("FACTORY_TELEMETRY_SHARD_NODES", 250)
if FACTORY_TELEMETRY_SHARD_NODES < 1:
    raise ImproperlyConfigured("FACTORY_TELEMETRY_SHARD_NODES must be at least 1")
FACTORY_TELEMETRY_TIMEOUT = env_float("FACTORY_TELEMETRY_TIMEOUT", 3.0)
FACTORY_TELEMETRY_RETENTION_DAYS = env_int("FACTORY_TELEMETRY_RETENTION_DAYS", 14)
# GPUs' and exporters' health changes, drains and resumes (fleet.models.HealthEvent) are kept longer:
# the history read before a card goes back to its vendor.
FACTORY_HEALTH_HISTORY_DAYS = env_int("FACTORY_HEALTH_HISTORY_DAYS", 365)
FACTORY_GPU_HEALTH_RULES = env("FACTORY_GPU_HEALTH_RULES", "") or ""
# The portal's own metrics at /metrics: readable with `Authorization: Bearer <FACTORY_METRICS_TOKEN>`
# or from an address in FACTORY_METRICS_ALLOWED_NETWORKS (CIDRs); nobody else.
FACTORY_METRICS_TOKEN = env("FACTORY_METRICS_TOKEN", "") or ""
FACTORY_METRICS_ALLOWED_NETWORKS = env_list("FACTORY_METRICS_ALLOWED_NETWORKS", "127.0.0.1/32,::1/128")
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR", "") or ""


def _periodic(task: str, every: float) -> dict:
    """A beat entry whose message expires when the next is due: a scheduler that ran on while the
    workers were down leaves one pass to do, not a backlog."""
    return {"task": task, "schedule": every, "options": {"expires": every}}


# The periodic work, by task name (apps above `factory` are named, never imported, here).
CELERY_BEAT_SCHEDULE = {
    "sweep": _periodic("jobs.tasks.sweep", FACTORY_SYNC_INTERVAL),
    "admission": _periodic("quotas.tasks.admit_pending", FACTORY_SYNC_INTERVAL),
    "cluster-health": _periodic("factory.tasks.check_cluster_health", FACTORY_HEALTH_INTERVAL),
    "metering": _periodic("billing.tasks.meter", env_float("FACTORY_METERING_INTERVAL", 60.0)),
    "metering-full": _periodic(
        "billing.tasks.meter_all_finished", env_float("FACTORY_METERING_FULL_INTERVAL", 21600.0)
    ),
    "telemetry": _periodic("fleet.tasks.scrape_due", FACTORY_TELEMETRY_TICK),
    "telemetry-prune": _periodic("fleet.tasks.prune", 3600.0),
    "quota-limits": _periodic("quotas.tasks.mirror_limits", env_float("FACTORY_LIMITS_INTERVAL", 300.0)),
    "notifications": _periodic("jobs.tasks.sweep_notifications", 60.0),
}

# Notifications (jobs/notifications.py): a failed send is tried again after
# FACTORY_NOTIFY_RETRY_BASE seconds, doubling, up to FACTORY_NOTIFY_MAX_ATTEMPTS sends in all; the
# sweep makes those that lost triggers did not, for state changes of the last
# FACTORY_NOTIFY_LOOKBACK seconds. Webhooks go to public https addresses only, unless
# FACTORY_WEBHOOK_ALLOW_PRIVATE / FACTORY_WEBHOOK_ALLOW_HTTP say otherwise (tests, closed sites).
# FACTORY_BASE_URL (https://factory.example.org) makes links in them absolute.
FACTORY_NOTIFY_MAX_ATTEMPTS = env_int("FACTORY_NOTIFY_MAX_ATTEMPTS", 6)
FACTORY_NOTIFY_RETRY_BASE = env_float("FACTORY_NOTIFY_RETRY_BASE", 30.0)
FACTORY_NOTIFY_LOOKBACK = env_float("FACTORY_NOTIFY_LOOKBACK", 3600.0)
FACTORY_WEBHOOK_ALLOW_PRIVATE = env_bool("FACTORY_WEBHOOK_ALLOW_PRIVATE", False)
FACTORY_WEBHOOK_ALLOW_HTTP = env_bool("FACTORY_WEBHOOK_ALLOW_HTTP", False)
FACTORY_BASE_URL = env("FACTORY_BASE_URL", "")

EMAIL_BACKEND = env("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "factory@localhost")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

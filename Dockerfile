# syntax=docker/dockerfile:1
# The portal's images. One for every process of the portal (the default, last stage: gunicorn,
# uvicorn, Celery workers and beat, migrations, chosen by the command), and one for the proxy
# (`--target proxy`: Debian's nginx with deploy/nginx/factory.conf.template). See docs/deploy.md.
#
#   docker build -t factory .                   docker build --target proxy -t factory-proxy .

# --- build: the virtualenv (compilers only here, for any dependency without a wheel) ----------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -r requirements.txt
COPY manage.py ./
COPY factory ./factory
COPY jobs ./jobs
COPY quotas ./quotas
COPY billing ./billing
COPY templates ./templates
COPY static ./static
COPY deploy/gunicorn.conf.py ./deploy/gunicorn.conf.py
# Static files collected once, hashed and compressed, served by WhiteNoise from the image.
RUN SECRET_KEY=collectstatic-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz \
    FACTORY_VAR_DIR=/tmp/build-var STATIC_ROOT=/src/staticfiles \
    /opt/venv/bin/python manage.py collectstatic --noinput -v0 \
 && rm -rf /tmp/build-var

# --- proxy: nginx from Debian, unprivileged, configured from the template at start -------------
FROM debian:bookworm-slim AS proxy
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light gettext-base curl \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /tmp/nginx && chown www-data:www-data /tmp/nginx
COPY deploy/nginx/nginx.conf /etc/nginx/nginx.conf
COPY deploy/nginx/factory.conf.template /etc/nginx/factory.conf.template
COPY --chmod=755 deploy/nginx/entrypoint.sh /usr/local/bin/factory-proxy
ENV FACTORY_PROXY_LISTEN=8080 FACTORY_MAX_BODY=1m \
    FACTORY_WEB_SERVERS="server web:8000;" FACTORY_EVENTS_SERVERS="server events:8001;"
USER 33:33
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD ["curl", "-fsS", "http://127.0.0.1:8080/proxy-healthz"]
ENTRYPOINT ["/usr/local/bin/factory-proxy"]

# --- the portal: no compilers, no tests, a user of its own ------------------------------------
FROM python:3.11-slim-bookworm AS portal
RUN groupadd --system --gid 10001 factory \
 && useradd --system --uid 10001 --gid factory --home-dir /app --shell /usr/sbin/nologin factory \
 && mkdir -p /var/lib/factory && chown factory:factory /var/lib/factory && chmod 700 /var/lib/factory
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=factory.settings STATIC_ROOT=/app/staticfiles FACTORY_VAR_DIR=/var/lib/factory \
    GUNICORN_BIND=0.0.0.0:8000
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py"]

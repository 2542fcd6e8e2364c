# Environment of the test run; sourced by scripts/test (and handy in a shell: `. scripts/test-env.sh`).
export DATABASE_URL="${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/factory}"
export REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}"
export SECRET_KEY="test-only-secret-key-not-for-production-0123456789abcdef"
export SECURE_SSL_REDIRECT=0
export FACTORY_VAR_DIR="$PWD/var/test"
# pytest takes factory.settings_test (a fast password hasher) from pyproject.toml, which a
# DJANGO_SETTINGS_MODULE in the environment would override; manage.py uses factory.settings.
unset DEBUG CELERY_BROKER_URL DJANGO_SETTINGS_MODULE

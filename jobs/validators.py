"""Rules a job spec must follow, attached to the model fields so forms and the API share them."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

from factory.adapters.base import IMAGE_MAX_LENGTH, normalise_image

from .choices import (
    ENV_NAME_PATTERN,
    MAX_COMMAND_BYTES,
    MAX_ENV_VALUE_BYTES,
    MAX_ENV_VARS,
    MAX_SECRET_VALUE_BYTES,
    MAX_SECRETS,
    NAME_PATTERN,
)

_NAME = re.compile(NAME_PATTERN)
_ENV_NAME = re.compile(ENV_NAME_PATTERN)
# Set by the backend for the job; a user may not override them.
RESERVED_ENV_NAMES = frozenset(
    {"CUDA_VISIBLE_DEVICES", "FACTORY_JOB_UID", "FACTORY_JOB_NAME", "FACTORY_ARRAY_ID", "FACTORY_ARRAY_INDEX"}
)


def validate_name(value: str) -> None:
    if not _NAME.fullmatch(value or ""):
        raise ValidationError(
            "Use 1 to 64 characters: letters, digits, dot, underscore or hyphen.", code="invalid_name"
        )


def validate_command(value: str) -> None:
    if not (value or "").strip():
        raise ValidationError("The command cannot be empty.", code="empty_command")
    size = len(value.encode("utf-8"))
    if size > MAX_COMMAND_BYTES:
        raise ValidationError(
            f"The command is {size:,} bytes; the limit is {MAX_COMMAND_BYTES:,} bytes (64 KiB).",
            code="command_too_long",
        )
    if "\x00" in value:
        raise ValidationError("The command cannot contain NUL characters.", code="nul_in_command")


def validate_image(value: str) -> None:
    # The reference grammar container runtimes parse, which the adapters check again: no
    # whitespace, shell syntax, control or non-ASCII characters fit in it.
    if value and normalise_image(value) is None:
        raise ValidationError(
            "Not a valid container image reference: write [registry/]repository[:tag][@digest] "
            f"with a lowercase repository, up to {IMAGE_MAX_LENGTH} characters, "
            "e.g. nvcr.io/nvidia/pytorch:24.05-py3.",
            code="invalid_image",
        )


def validate_env(value) -> None:
    _validate_variables(value, "Environment variables", MAX_ENV_VARS, MAX_ENV_VALUE_BYTES)


def validate_secrets(value) -> None:
    """Secrets reach the job as environment variables: the same names, larger values. A value is
    never quoted back in a message."""
    _validate_variables(value, "Secrets", MAX_SECRETS, MAX_SECRET_VALUE_BYTES)


def _validate_variables(value, what: str, most: int, value_bytes: int) -> None:
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a mapping of names to values.", code="env_type")
    if len(value) > most:
        raise ValidationError(f"At most {most} {what.lower()}.", code="env_too_many")
    for name, val in value.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            shown = name[:64] if isinstance(name, str) else name
            raise ValidationError(
                f"{shown!r} is not a valid environment variable name: use letters, digits and "
                "underscores, not starting with a digit.",
                code="env_name",
            )
        if name in RESERVED_ENV_NAMES:
            raise ValidationError(
                f"{name} is set by the factory and cannot be overridden.", code="env_reserved"
            )
        if not isinstance(val, str):
            raise ValidationError(f"The value of {name} must be a string.", code="env_value_type")
        if "\x00" in val or len(val.encode("utf-8")) > value_bytes:
            raise ValidationError(
                f"The value of {name} must be under {value_bytes} bytes without NUL characters.",
                code="env_value",
            )


def validate_webhook_url(value: str) -> None:
    """An https address of a public host. A webhook is sent from inside the platform's network:
    an address of a private, loopback or link-local host (the cloud's metadata service, the
    database) would let a user reach what they must not. FACTORY_WEBHOOK_ALLOW_PRIVATE and
    FACTORY_WEBHOOK_ALLOW_HTTP lift the rules (for tests and closed sites)."""
    from .notifications import webhook_refusal

    refusal = webhook_refusal(value)
    if refusal:
        raise ValidationError(refusal, code="webhook_url")

from __future__ import annotations

import textwrap

import pytest
from django.core.management import call_command

from platform_config import loading


def declare(text: str) -> loading.Declaration:
    return loading.from_texts([("", textwrap.dedent(text))])


@pytest.fixture
def platform_file(tmp_path):
    """Write a platform file; returns its path."""

    def write(text: str, name: str = "platform.yaml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def run_platform(capsys):
    """`manage.py platform …`: (exit status, output, errors)."""

    def run(*args) -> tuple[int, str, str]:
        status = 0
        try:
            call_command("platform", *[str(a) for a in args])
        except SystemExit as exc:
            status = exc.code
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run

#!/usr/bin/env python
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.settings")
    from django.core.management import execute_from_command_line

    from factory.preflight import settings_or_exit

    settings_or_exit()  # a bad setting is one line, not a traceback
    execute_from_command_line(sys.argv)

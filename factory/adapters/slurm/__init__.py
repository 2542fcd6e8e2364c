"""The `slurm` backend: a real Slurm cluster driven through its command-line tools.

- adapter.py: the job protocol (submit, find, statuses, cancel, logs, health);
- accounts.py: tenants as Slurm accounts and their GPU limits (sacctmgr);
- cli.py: running the tools and reading what they print;
- connection.py: a cluster's settings.
"""

from __future__ import annotations

from .adapter import SlurmAdapter
from .connection import SlurmConnection

__all__ = ["SlurmAdapter", "SlurmConnection"]

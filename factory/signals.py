"""Signals of the bottom app for the apps above it."""

from __future__ import annotations

from django.dispatch import Signal

# The demo tenant, GPU types and clusters exist (sent by `seed_demo`, inside its transaction):
# apps above add their own demo data (quotas, budgets, prices). Arguments: tenant.
demo_seeded = Signal()

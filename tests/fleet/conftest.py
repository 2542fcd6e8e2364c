"""The fleet's tests scrape the GPU exporter simulator over real HTTP: no GPU, and so no real
dcgm-exporter, can run on the machines the tests run on (see fleet/simulator.py)."""

from __future__ import annotations

import threading

import pytest

from fleet.inventory import local_simulated_nodes
from fleet.simulator import Simulator, serve


@pytest.fixture
def fast_rules(settings):
    """Health rules for tests: resume at once when healthy, two hot samples fail a GPU."""
    settings.FACTORY_GPU_HEALTH_RULES = '{"resume_after_seconds": 0, "temperature_samples": 2}'
    settings.FACTORY_TELEMETRY_TIMEOUT = 0.5
    return settings


@pytest.fixture
def simulator(cluster, fast_rules):
    """The local cluster's pools as two simulated nodes (local-a100, local-h100) behind a real
    HTTP server, registered as the cluster's nodes."""
    server = serve(Simulator([]), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    sim = Simulator(local_simulated_nodes(base))
    server.RequestHandlerClass.simulator = sim
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sim.base_url = base
    yield sim
    server.shutdown()
    server.server_close()

"""`manage.py gpu_simulator`: serve the local clusters' simulated GPUs in dcgm-exporter's format
(fleet.simulator) and register their nodes, so that the portal scrapes them. No GPUs exist on
the hosts this runs on; see fleet/simulator.py."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fleet.devprometheus import config_text, scrape_config
from fleet.inventory import local_simulated_nodes
from fleet.simulator import Simulator, serve


class Command(BaseCommand):
    help = "Serve the local clusters' simulated GPUs as a GPU exporter would."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9400)
        parser.add_argument(
            "--prometheus-config",
            type=Path,
            help="also write a prometheus.yml that scrapes the simulated nodes (job gpu-exporter)",
        )
        parser.add_argument("--scrape-interval", type=float, default=5.0)

    def handle(self, *args, host: str, port: int, **options) -> None:
        nodes = local_simulated_nodes(f"http://{host}:{port}")
        if not nodes:
            raise CommandError("no local cluster with GPU pools: nothing to simulate")
        if options["prometheus_config"]:
            scrape = scrape_config(
                f"{host}:{port}", [n.name for n in nodes], interval=options["scrape_interval"]
            )
            written = options["prometheus_config"].with_suffix(".tmp")
            written.write_text(config_text(scrape))
            written.replace(options["prometheus_config"])
        server = serve(Simulator(nodes), host, port)
        self.stdout.write(f"GPU exporter simulator: {len(nodes)} node(s) on http://{host}:{port}")
        server.serve_forever()

"""`manage.py telemetry_source CLUSTER embedded` or `… prometheus --url URL [--match LABEL=VALUE …]`:
where a cluster's GPU telemetry comes from. Credentials are read from files (never from the
command line, which other users of the host can see)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from factory.models import Cluster
from fleet.choices import TelemetrySource
from fleet.models import ClusterTelemetry


class Command(BaseCommand):
    help = "Set where a cluster's GPU telemetry comes from: its nodes' exporters, or a Prometheus."

    def add_arguments(self, parser) -> None:
        parser.add_argument("cluster")
        parser.add_argument("source", choices=TelemetrySource.values)
        parser.add_argument("--url", help="the Prometheus (its PromQL HTTP API's base URL)")
        parser.add_argument(
            "--match",
            action="append",
            default=[],
            metavar="LABEL=VALUE",
            help="picks the cluster's exporters",
        )
        parser.add_argument("--node-label", help="the label naming the node (default hostname)")
        parser.add_argument("--timeout", type=float)
        parser.add_argument("--bearer-token-file", type=Path)
        parser.add_argument("--username")
        parser.add_argument("--password-file", type=Path)
        parser.add_argument("--ca-file")
        parser.add_argument("--no-verify-tls", action="store_true")
        parser.add_argument("--interval", type=float, help="seconds between cycles")

    def handle(self, *args, cluster: str, source: str, **options) -> None:
        found = Cluster.objects.filter(slug=cluster).first()
        if found is None:
            raise CommandError(f"no cluster {cluster!r}")
        telemetry = ClusterTelemetry.of(found)
        telemetry.source = source
        if options["interval"]:
            telemetry.interval_seconds = options["interval"]
        if source == TelemetrySource.PROMETHEUS:
            try:
                telemetry.set_prometheus(self.settings(options))
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        telemetry.unavailable_since, telemetry.unavailable_reason = None, ""
        telemetry.save()
        where = f"Prometheus at {telemetry.prometheus['url']}" if telemetry.from_prometheus else "its nodes"
        self.stdout.write(f"{found.slug}: GPU telemetry from {where}")

    def settings(self, options) -> dict:
        settings: dict = {}
        if options["url"]:
            settings["url"] = options["url"]
        if options["match"]:
            pairs = [item.partition("=") for item in options["match"]]
            if any(not sep for _, sep, _ in pairs):
                raise CommandError("--match takes LABEL=VALUE")
            settings["match"] = {label: value for label, _, value in pairs}
        for name in ("node_label", "timeout", "username", "ca_file"):
            if options[name] is not None:
                settings[name] = options[name]
        if options["no_verify_tls"]:
            settings["verify_tls"] = False
        for name, path in (
            ("bearer_token", options["bearer_token_file"]),
            ("password", options["password_file"]),
        ):
            if path is not None:
                settings[name] = path.read_text().strip()
        return settings

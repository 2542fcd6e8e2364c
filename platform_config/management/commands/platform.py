"""`manage.py platform plan|apply|export|schema`: the platform as code from the shell."""

from __future__ import annotations

import getpass
import json
import sys

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from platform_config import applying, exporting, loading, planning, schema

CHANGES = 2  # plan's exit status when applying would change something (0: nothing to do)


class Command(BaseCommand):
    help = (
        "Plan, apply or export the platform declared in a YAML file or directory, or print its JSON Schema."
    )

    def add_arguments(self, parser):
        verbs = parser.add_subparsers(dest="verb", required=True)
        plan = verbs.add_parser("plan", help="Show what applying FILE would change (exit 2 if anything).")
        plan.add_argument("file", help="A platform file, or a directory of them.")
        plan.add_argument("--json", action="store_true", help="Print the plan as JSON.")
        apply = verbs.add_parser("apply", help="Apply FILE in one transaction, as one change set.")
        apply.add_argument("file")
        apply.add_argument("--author", help="The portal user recorded as the change set's author.")
        apply.add_argument(
            "--expect-plan", metavar="DIGEST", help="Apply only if the plan is still this one (from `plan`)."
        )
        export = verbs.add_parser("export", help="Write today's state as a platform file.")
        export.add_argument("--output", "-o", help="Write to this file instead of standard output.")
        verbs.add_parser("schema", help="Print the platform file's JSON Schema.")

    def handle(self, *args, verb: str, **options):
        getattr(self, f"do_{verb}")(**options)

    def do_schema(self, **options) -> None:
        self.stdout.write(json.dumps(schema.json_schema(), indent=2))

    def do_export(self, output=None, **options) -> None:
        text = exporting.export_text()
        if output:
            with open(output, "w") as out:
                out.write(text)
        else:
            self.stdout.write(text, ending="")

    def do_plan(self, file: str, json: bool = False, **options) -> None:
        plan = self.plan_or_fail(file)
        if json:
            self.stdout.write(_dumps(plan.as_json()))
        else:
            self.stdout.write(plan.render())
        if plan.has_changes:
            sys.exit(CHANGES)

    def plan_or_fail(self, file: str):
        try:
            return planning.make_plan(self.load(file))
        except loading.Invalid as exc:
            raise self.invalid(exc) from None

    def do_apply(
        self, file: str, author: str | None = None, expect_plan: str | None = None, **options
    ) -> None:
        user = None
        if author:
            user = get_user_model().objects.filter(username=author).first()
            if user is None:
                raise CommandError(f"No portal user named {author!r}.")
        declaration = self.load(file)
        source = f"{declaration.source} (applied by {author or getpass.getuser()} from the shell)"
        try:
            plan, change_set = applying.apply(declaration, author=user, source=source, expect=expect_plan)
        except loading.Invalid as exc:
            raise self.invalid(exc) from None
        self.stdout.write(plan.render())
        if change_set is not None:
            self.stdout.write(f"Applied as change set {change_set.pk}.")

    def load(self, file: str) -> loading.Declaration:
        try:
            return loading.load(file)
        except loading.Invalid as exc:
            raise self.invalid(exc) from None

    @staticmethod
    def invalid(exc: loading.Invalid) -> CommandError:
        lines = [f"  {problem}" for problem in exc.problems]
        return CommandError(
            f"The declaration is refused ({len(lines)} problems); nothing was applied:\n" + "\n".join(lines)
        )


def _dumps(data) -> str:
    return json.dumps(data, indent=2, default=str)

"""API tokens from before tokens were hashed (Django REST framework's authtoken table: one
plaintext key per user) become hashed API tokens, valid for FACTORY_TOKEN_DAYS from now, and the
plaintext keys are deleted. Clients keep working with the token they have until it expires."""

import hashlib
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import migrations
from django.utils import timezone
from django.utils.dateparse import parse_datetime

OLD_TABLE = "authtoken_token"


def aware(value) -> datetime:
    if isinstance(value, str):  # SQLite may hand back text
        value = parse_datetime(value)
    if value is None:
        return timezone.now()
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


def hash_plaintext_tokens(apps, schema_editor):
    connection = schema_editor.connection
    if OLD_TABLE not in connection.introspection.table_names():
        return  # a database that never had them
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {quote('key')}, {quote('user_id')}, {quote('created')} FROM {quote(OLD_TABLE)}"
        )
        rows = cursor.fetchall()
    api_token = apps.get_model("factory", "ApiToken")
    expires_at = timezone.now() + timedelta(days=getattr(settings, "FACTORY_TOKEN_DAYS", 90))
    api_token.objects.bulk_create(
        api_token(
            user_id=user_id,
            name="made before tokens were hashed",
            digest=hashlib.sha256(key.encode()).hexdigest(),  # as factory.models.token_digest
            prefix=key[:8],
            created_at=aware(created),
            expires_at=expires_at,
        )
        for key, user_id, created in rows
    )
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {quote(OLD_TABLE)}")


class Migration(migrations.Migration):
    dependencies = [("factory", "0005_api_token")]

    # The plaintext keys are gone: going back leaves the hashed tokens where they are.
    operations = [migrations.RunPython(hash_plaintext_tokens, migrations.RunPython.noop)]

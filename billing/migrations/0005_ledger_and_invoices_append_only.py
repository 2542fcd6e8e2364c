"""Ledger lines and issued invoices are append-only in the database itself: every UPDATE and DELETE
of them is refused, unless the transaction says it is a repair (billing.immutable.repairing sets
factory.ledger_repair). PostgreSQL only: SQLite serves development."""

from django.db import migrations

TABLES = ("billing_usagerecord", "billing_invoice", "billing_invoiceline")
CREATE = [
    """
    CREATE OR REPLACE FUNCTION billing_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('factory.ledger_repair', true) = 'on' THEN
            RETURN COALESCE(NEW, OLD);
        END IF;
        RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'integrity_constraint_violation',
                  HINT = 'Ledger lines and issued invoices never change: correct with a new line.';
    END
    $$
    """,
    *(
        f"""
        CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
        FOR EACH ROW EXECUTE FUNCTION billing_append_only()
        """
        for table in TABLES
    ),
]
DROP = [
    *(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}" for table in TABLES),
    "DROP FUNCTION IF EXISTS billing_append_only()",
]


def run(statements):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            for sql in statements:
                schema_editor.execute(sql, None)  # no parameters: its % are PL/pgSQL's

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0004_credits_corrections_invoices"),
    ]

    operations = [migrations.RunPython(run(CREATE), run(DROP), elidable=False)]

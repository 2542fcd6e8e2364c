from django.db import migrations, models

# The key of factory.hierarchy.HIERARCHY_LOCK: a move waits for any other change of the tree, then
# checks the tree as committed (each query of a PL/pgSQL function takes a fresh snapshot).
CREATE = """
CREATE OR REPLACE FUNCTION factory_tenant_no_cycle() RETURNS trigger AS $$
DECLARE
    looped boolean;
BEGIN
    IF NEW.parent_id IS NULL OR (TG_OP = 'UPDATE' AND NEW.parent_id IS NOT DISTINCT FROM OLD.parent_id) THEN
        RETURN NEW;
    END IF;
    PERFORM pg_advisory_xact_lock(1953654117);
    WITH RECURSIVE above(id, parent_id) AS (
        SELECT id, parent_id FROM factory_tenant WHERE id = NEW.parent_id
        UNION
        SELECT t.id, t.parent_id FROM factory_tenant t JOIN above a ON t.id = a.parent_id
    )
    SELECT EXISTS (SELECT 1 FROM above WHERE id = NEW.id) INTO looped;
    IF looped THEN
        RAISE EXCEPTION 'tenant % cannot be placed below tenant %: it would be its own ancestor',
            NEW.id, NEW.parent_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS factory_tenant_no_cycle ON factory_tenant;
CREATE TRIGGER factory_tenant_no_cycle BEFORE INSERT OR UPDATE OF parent_id ON factory_tenant
    FOR EACH ROW EXECUTE FUNCTION factory_tenant_no_cycle();
"""
DROP = """
DROP TRIGGER IF EXISTS factory_tenant_no_cycle ON factory_tenant;
DROP FUNCTION IF EXISTS factory_tenant_no_cycle();
"""


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)  # no placeholders: % is PL/pgSQL's


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("factory", "0011_pool_topology"),
    ]

    operations = [
        migrations.AddConstraint(
            model_name="tenant",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("parent__isnull", True),
                    models.Q(("parent", models.F("pk")), _negated=True),
                    _connector="OR",
                ),
                name="tenant_not_its_own_parent",
            ),
        ),
        migrations.RunPython(create_trigger, drop_trigger),
    ]

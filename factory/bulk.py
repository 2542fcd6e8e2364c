"""Many rows written in one statement, for the passes that write thousands at once (admission).

On PostgreSQL each column's values travel as one array, joined to the table by unnest (INSERT …
SELECT … FROM unnest(…), UPDATE … FROM unnest(…)): the statement costs the same to build and to
plan for a thousand rows as for one, and no model instance or ORM expression is made per row,
which is where bulk_create and a CASE per row spend their time. Elsewhere (SQLite, in
development) the ORM's bulk_create and a CASE per column do the same work.

Values are given as the database takes them: numbers, strings, Decimals, dates and times, None,
and ids for foreign keys. A column's strings repeated across many rows (the same reason for
thousands of waiting jobs) travel once each, the rows carrying their positions.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection, models
from django.utils import timezone


def insert_many(model: type[models.Model], columns: dict[str, Sequence], same: dict[str, object]) -> None:
    """Insert one row per position of `columns` ({field: a value per row}), with `same` ({field:
    one value}) in every row; the model's other fields take their defaults."""
    rows = len(next(iter(columns.values()))) if columns else 0
    if not rows:
        return
    meta = model._meta
    same = {**_defaults(model, set(columns) | set(same)), **same}
    if connection.vendor != "postgresql":
        model.objects.bulk_create(
            model(**{name: values[i] for name, values in columns.items()}, **same) for i in range(rows)
        )
        return
    quote = connection.ops.quote_name
    names, selected, params, types, arrays = _unnested(meta, columns)
    for name, value in same.items():
        field = meta.get_field(name)
        names.append(quote(field.column))
        selected.append(f"%s::{_array_type(field)}")
        params.append(field.get_db_prep_save(value, connection))
    aliases = ", ".join(f"v{index}" for index in range(len(columns)))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(meta.db_table)} ({', '.join(names)}) SELECT {', '.join(selected)} "
            f"FROM unnest({', '.join(types)}) AS u({aliases})",
            [*params, *arrays],
        )


def update_many(
    model: type[models.Model],
    pks: Sequence[int],
    columns: dict[str, Sequence],
    same: dict[str, object],
    where: dict[str, object] | None = None,
) -> int:
    """Update the rows `pks`: each to its value of `columns` ({field: a value per pk, in the
    order of `pks`}), all to `same`; only those whose fields also equal `where`. Returns how many
    rows changed."""
    if not pks:
        return 0
    meta = model._meta
    where = where or {}
    if connection.vendor != "postgresql":
        cases = {
            name: models.Case(
                *(models.When(pk=pk, then=models.Value(v)) for pk, v in zip(pks, values, strict=True)),
                output_field=meta.get_field(name),
            )
            for name, values in columns.items()
        }
        return model.objects.filter(pk__in=list(pks), **where).update(**same, **cases)
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    sets, params = [], []
    for name, value in same.items():
        field = meta.get_field(name)
        sets.append(f"{quote(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection))
    names, expressions, expression_params, types, arrays = _unnested(meta, columns)
    sets += [f"{name} = {expression}" for name, expression in zip(names, expressions, strict=True)]
    params += expression_params
    types.insert(0, f"%s::{_array_type(meta.pk)}[]")
    arrays.insert(0, list(pks))
    conditions, condition_params = [f"{table}.{quote(meta.pk.column)} = u.id"], []
    for name, value in where.items():
        field = meta.get_field(name)
        conditions.append(f"{table}.{quote(field.column)} = %s")
        condition_params.append(field.get_db_prep_save(value, connection))
    aliases = "".join(f", v{index}" for index in range(len(columns)))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {', '.join(sets)} FROM unnest({', '.join(types)}) AS u(id{aliases}) "
            f"WHERE {' AND '.join(conditions)}",
            [*params, *arrays, *condition_params],
        )
        return cursor.rowcount


def _unnested(meta, columns: dict[str, Sequence]) -> tuple[list[str], list[str], list, list[str], list]:
    """Columns whose values travel as arrays read by unnest, aliased u.v0, u.v1 …: their quoted
    names, the expressions that read a row's value, those expressions' params, and unnest's
    placeholders and arrays."""
    quote = connection.ops.quote_name
    names, expressions, params, types, arrays = [], [], [], [], []
    for index, (name, values) in enumerate(columns.items()):
        field = meta.get_field(name)
        expression, expression_params, placeholder, array = _travelling(field, values, f"u.v{index}")
        names.append(quote(field.column))
        expressions.append(expression)
        params += expression_params
        types.append(placeholder)
        arrays.append(array)
    return names, expressions, params, types, arrays


def _travelling(field: models.Field, values: Sequence, alias: str) -> tuple[str, list, str, list]:
    """How one column's values travel: (the expression that reads a row's value, its params, the
    placeholder of the array unnest reads, that array). Strings that repeat (each twice or more
    on average) go as their distinct values, once, and each row's position among them."""
    kind = _array_type(field)
    values = list(values)
    if values and all(isinstance(value, str) for value in values):
        distinct = list(dict.fromkeys(values))
        if 2 * len(distinct) <= len(values):
            position = {value: number for number, value in enumerate(distinct, start=1)}
            return f"(%s::{kind}[])[{alias}]", [distinct], "%s::int[]", [position[value] for value in values]
    return alias, [], f"%s::{kind}[]", values


def _array_type(field: models.Field) -> str:
    """The column's type without its modifiers (varchar, numeric): an array of it takes values
    of any length or precision, which the column then checks."""
    return field.db_type(connection).split("(")[0]


def _defaults(model: type[models.Model], given: set[str]) -> dict[str, object]:
    """The values the ORM would give the fields not `given`: their defaults, the time for
    auto_now(_add) fields, else None."""
    values: dict[str, object] = {}
    for field in model._meta.concrete_fields:
        if field.primary_key or field.name in given or field.attname in given:
            continue
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            values[field.name] = timezone.now()
        elif field.has_default():
            values[field.name] = field.get_default()
        else:
            values[field.name] = None
    return values

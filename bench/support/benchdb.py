"""The throwaway PostgreSQL databases the benchmarks make and drop (local server, trust auth)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psycopg

SERVER = "postgresql://postgres@127.0.0.1:5432"


def url(name: str) -> str:
    return f"{SERVER}/{name}"


def recreate(name: str) -> None:
    with psycopg.connect(url("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")


def drop(name: str) -> None:
    with psycopg.connect(url("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def bulk_load(cursor, table: str) -> Iterator[None]:
    """Load many rows into `table` as PostgreSQL's manual advises for populating a database: its
    secondary indexes and foreign keys go first and come back after, each index built once by a
    sort and each key checked in one pass, instead of ten million index insertions and, the keys
    being deferred, ten million queued checks held until commit."""
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype = 'f'",
        [table],
    )
    keys = cursor.fetchall()
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype IN ('p', 'u'))",
        [table, table],
    )
    indexes = cursor.fetchall()
    for name, _ in keys:
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cursor.execute(f'DROP INDEX "{name}"')
    started = time.perf_counter()
    yield
    loaded = time.perf_counter()
    cursor.execute("SET maintenance_work_mem = '256MB'")
    for _, definition in indexes:
        cursor.execute(definition)
    for name, definition in keys:
        cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    cursor.execute("RESET maintenance_work_mem")
    # As a table in service is: hint bits set and pages all-visible, and no autovacuum of the new
    # rows later, in the middle of what the benchmark times.
    cursor.execute(f"VACUUM (FREEZE, ANALYZE) {table}")
    print(
        f"{table}: rows in {loaded - started:.1f} s, {len(indexes)} indexes, {len(keys)} keys and a "
        f"vacuum in {time.perf_counter() - loaded:.1f} s",
        flush=True,
    )

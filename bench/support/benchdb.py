"""The throwaway PostgreSQL databases the benchmarks make and drop (local server, trust auth)."""

from __future__ import annotations

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

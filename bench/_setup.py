"""Shared set-up for the benchmarks: a PostgreSQL database of their own, migrated."""

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/gantry_bench"


def django_on_postgres() -> str:
    """Point Django at BENCH_DATABASE_URL (created if missing), migrate, return the URL."""
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    parsed = urlparse(url)
    import psycopg

    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute(
            "select 1 from pg_database where datname = %s", (parsed.path.lstrip("/"),)
        ).fetchone()
        if not exists:
            conn.execute(f'create database "{parsed.path.lstrip("/")}"')
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    # bench/marketplace.py would shadow the marketplace app: work from the project root
    # (Celery also puts the working directory first on sys.path).
    os.chdir(ROOT)
    bench = Path(__file__).resolve().parent
    sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != bench]
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return url


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]

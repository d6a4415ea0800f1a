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


def local_cpu_pool(code: str, name: str):
    """A region `code` with a CPU pool on the local driver and this machine as its node (4
    slots): where the benches that run real llama.cpp replicas place them."""
    from deployments.models import Driver, GpuPool, GpuType, Node, Region

    region, _ = Region.objects.get_or_create(code=code, defaults={"name": name})
    pool, _ = GpuPool.objects.get_or_create(
        region=region,
        name="cpu",
        defaults={"driver": Driver.LOCAL, "gpu_type": GpuType.objects.get(code="cpu")},
    )
    Node.objects.get_or_create(
        pool=pool, name="localhost", defaults={"gpus_total": 4, "address": "127.0.0.1"}
    )
    return region, pool


def start_gateway(port: int, *, env: dict | None = None, core: int | None = None, quiet=False):
    """The gateway in a process of its own, as `make run` starts it (uvicorn, no proxy
    headers), on `port`; pinned to CPU `core` when given."""
    import subprocess

    argv = [sys.executable, "-m", "uvicorn", "gateway.asgi:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning", "--no-proxy-headers"]
    if quiet:
        argv.append("--no-access-log")
    if core is not None:
        argv = ["taskset", "-c", str(core), *argv]
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(argv, cwd=ROOT, env=env or os.environ.copy(), stdout=out, stderr=out)

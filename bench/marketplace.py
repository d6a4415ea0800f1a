"""Marketplace read path with 1,000 catalog models on PostgreSQL: server time of the grid
page and of the list API, measured in-process through Django's full request stack.

Side by side in the same run, a baseline that renders the same first page the naive
way — each card's cheapest price looked up with its own query (N+1) — to show what the
single annotated query buys. Also prints the queries each page takes.
"""

import os
import statistics
import time

from _setup import django_on_postgres, percentile

MODELS = 1000
REQUESTS = 200


def build():
    from django.contrib.auth import get_user_model

    from deployments.gpu_types import ensure_gpu_types
    from deployments.models import GpuType
    from marketplace.models import CatalogModel, ServingProfile
    from portal.models import Organization
    from portal.services import organization_create

    ensure_gpu_types()
    CatalogModel.objects.all().delete()
    types = list(GpuType.objects.all())
    models = CatalogModel.objects.bulk_create(
        CatalogModel(
            slug=f"bench-{i}",
            name=f"Bench model {i}",
            family=["qwen", "llama", "deepseek"][i % 3],
            parameters_b=1 + i % 400,
            context_length=32768,
            license="apache-2.0",
            num_layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            tasks=["chat"],
            downloads=i * 7,
        )
        for i in range(MODELS)
    )
    ServingProfile.objects.bulk_create(
        ServingProfile(
            model=m,
            name=f"p{j}",
            engine="vllm",
            gpu_type=types[(i + j) % len(types)],
            gpu_count=1 + j,
            quantization="bf16",
            max_model_len=32768,
            fits=True,
        )
        for i, m in enumerate(models)
        for j in range(3)
    )
    user, _ = get_user_model().objects.get_or_create(username="bench-mp")
    org = Organization.objects.filter(slug="bench-mp").first() or organization_create(
        name="bench-mp", slug="bench-mp", owner=user
    )
    return user, org


def timed(fn, n=REQUESTS):
    for _ in range(10):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main():
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ["DEBUG"] = "True"
    django_on_postgres()
    from django.db import connection
    from django.template.loader import render_to_string
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    from marketplace.fit import price_per_hour_cents
    from marketplace.models import CatalogModel
    from portal.services import api_key_create

    user, org = build()
    client = Client()
    client.force_login(user)
    _key, raw = api_key_create(organization=org, user=user, name="bench")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    def grid():
        assert client.get("/marketplace/").status_code == 200

    def listing():
        assert api.get("/api/v1/models").status_code == 200

    def naive_first_page():
        models = list(CatalogModel.objects.order_by("-downloads", "name")[:48])
        for m in models:
            prices = [price_per_hour_cents(p) for p in m.profiles.all()]
            m.cheapest_cents = min(prices) if prices else None
        render_to_string("marketplace/grid.html#results", {"models": models, "page": None})

    queries = {}
    for name, fn in (("grid", grid), ("api", listing), ("naive", naive_first_page)):
        with CaptureQueriesContext(connection) as ctx:
            fn()
        queries[name] = len(ctx.captured_queries)
    results = {"grid": timed(grid), "api": timed(listing), "naive": timed(naive_first_page)}
    print(f"{MODELS} catalog models, {MODELS * 3} profiles; {REQUESTS} requests each")
    print(f"{'path':<28}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'queries':>9}")
    labels = {
        "grid": "grid page (48 cards)",
        "api": "GET /api/v1/models (50)",
        "naive": "baseline: N+1 first page",
    }
    for key, samples in results.items():
        print(
            f"{labels[key]:<28}{percentile(samples, 50):>9.1f}{percentile(samples, 95):>9.1f}"
            f"{statistics.mean(samples):>9.1f}{queries[key]:>9}"
        )
    grid_p95, api_p95 = percentile(results["grid"], 95), percentile(results["api"], 95)
    ratio = percentile(results["naive"], 50) / percentile(results["grid"], 50)
    print(
        f"grid vs naive first page: {ratio:.2f}× (p50; the naive figure is without "
        "middleware or auth)"
    )
    print(
        f"RESULT grid_p95_ms={grid_p95:.1f} api_p95_ms={api_p95:.1f} "
        f"max_queries={max(queries['grid'], queries['api'])} "
        f"naive_p95_ms={percentile(results['naive'], 95):.1f} naive_queries={queries['naive']}"
    )


if __name__ == "__main__":
    main()

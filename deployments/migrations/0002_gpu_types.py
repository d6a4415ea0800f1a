"""The GPU-type table every pool refers to. List prices are starting points that
operators change in the admin (or through the billing rate table)."""

from django.db import migrations

GPU_TYPES = [
    # code, name, memory GB, list price per GPU-hour in cents
    ("b200-192gb", "B200 192GB", 192, 599),
    ("h200-141gb", "H200 141GB", 141, 399),
    ("h100-80gb", "H100 80GB", 80, 299),
    ("a100-80gb", "A100 80GB", 80, 179),
    ("l40s-48gb", "L40S 48GB", 48, 99),
    ("cpu", "CPU", 0, 5),
]


def add(apps, schema_editor):
    GpuType = apps.get_model("deployments", "GpuType")
    for code, name, memory, price in GPU_TYPES:
        GpuType.objects.get_or_create(
            code=code, defaults={"name": name, "memory_gb": memory, "price_per_hour_cents": price}
        )


def remove(apps, schema_editor):
    apps.get_model("deployments", "GpuType").objects.filter(
        code__in=[g[0] for g in GPU_TYPES], pools__isnull=True
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("deployments", "0001_initial")]
    operations = [migrations.RunPython(add, remove)]

from django.db import migrations

from deployments.gpu_types import GPU_TYPES, ensure_gpu_types


def add(apps, schema_editor):
    ensure_gpu_types(apps.get_model("deployments", "GpuType"))


def remove(apps, schema_editor):
    apps.get_model("deployments", "GpuType").objects.filter(
        code__in=[g[0] for g in GPU_TYPES], pools__isnull=True
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("deployments", "0001_initial")]
    operations = [migrations.RunPython(add, remove)]

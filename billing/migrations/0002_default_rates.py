from django.db import migrations

from billing.gpu_rates import ensure_default_rates


def add(apps, schema_editor):
    ensure_default_rates(apps.get_model("billing", "GpuRate"), apps.get_model("billing", "TokenRate"))


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(add, migrations.RunPython.noop)]

"""One price for a GPU-hour: billing's rate table.

The GPU type's copy of its price and the pool override go. Neither was ever charged (the
ledger always priced from the rate table), so no bill changes; a GPU type that had a list
price but no rate gets that price as its rate, so no page loses a price it showed.
"""

from datetime import UTC, datetime

from django.db import migrations


def prices_to_rates(apps, schema_editor):
    GpuType = apps.get_model("deployments", "GpuType")
    GpuRate = apps.get_model("billing", "GpuRate")
    rated = set(GpuRate.objects.values_list("gpu_type", flat=True))
    for code, cents in GpuType.objects.exclude(price_per_hour_cents=0).values_list(
        "code", "price_per_hour_cents"
    ):
        if code not in rated:
            GpuRate.objects.create(
                gpu_type=code, cents_per_hour=cents, effective_from=datetime(2020, 1, 1, tzinfo=UTC)
            )


def rates_to_prices(apps, schema_editor):
    GpuType = apps.get_model("deployments", "GpuType")
    GpuRate = apps.get_model("billing", "GpuRate")
    now = datetime.now(UTC)
    for gpu in GpuType.objects.all():
        rate = (
            GpuRate.objects.filter(gpu_type=gpu.code, effective_from__lte=now)
            .order_by("-effective_from")
            .first()
        )
        if rate is not None:
            GpuType.objects.filter(pk=gpu.pk).update(price_per_hour_cents=rate.cents_per_hour)


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0006_traffic"),
        ("billing", "0005_alter_invoiceline_kind_alter_usagerecord_kind_credit"),
    ]
    operations = [
        migrations.RunPython(prices_to_rates, rates_to_prices),
        migrations.RemoveField(model_name="gpupool", name="price_per_hour_cents"),
        migrations.RemoveField(model_name="gputype", name="price_per_hour_cents"),
    ]

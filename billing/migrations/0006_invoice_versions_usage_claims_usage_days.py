import datetime

import django.db.models.deletion
from django.db import migrations, models


def number_versions(apps, schema_editor):
    """Months voided and re-issued before versions existed: number them in issue order."""
    Invoice = apps.get_model("billing", "Invoice")
    seen: dict = {}
    for invoice in Invoice.objects.order_by("organization_id", "period_start", "pk"):
        key = (invoice.organization_id, invoice.period_start)
        seen[key] = seen.get(key, 0) + 1
        if invoice.version != seen[key]:
            invoice.version = seen[key]
            invoice.save(update_fields=["version"])


def claim_closed_months(apps, schema_editor):
    """Rows already counted by a closed invoice are marked as its own, so the next close
    does not carry them again as late usage."""
    Invoice = apps.get_model("billing", "Invoice")
    UsageRecord = apps.get_model("billing", "UsageRecord")
    for invoice in Invoice.objects.filter(status="closed"):
        first = invoice.period_start
        after = datetime.date(first.year + (first.month == 12), first.month % 12 + 1, 1)
        UsageRecord.objects.filter(
            organization_id=invoice.organization_id,
            invoice__isnull=True,
            window_start__gte=datetime.datetime(
                first.year, first.month, 1, tzinfo=datetime.UTC
            ),
            window_start__lt=datetime.datetime(after.year, after.month, 1, tzinfo=datetime.UTC),
        ).update(invoice=invoice)


def sum_days(apps, schema_editor):
    """Daily totals of the ledger so far; usage_ingest keeps them from here on."""
    from django.db.models import Sum
    from django.db.models.functions import TruncDate

    UsageRecord = apps.get_model("billing", "UsageRecord")
    UsageDay = apps.get_model("billing", "UsageDay")
    rows = (
        UsageRecord.objects.annotate(day=TruncDate("window_start", tzinfo=datetime.UTC))
        .values("organization_id", "day", "deployment_name", "kind")
        .annotate(quantity=Sum("quantity"), amount_micros=Sum("amount_micros"))
        .order_by()
    )
    UsageDay.objects.bulk_create((UsageDay(**r) for r in rows.iterator()), batch_size=5000)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0005_alter_invoiceline_kind_alter_usagerecord_kind_credit"),
        ("portal", "0001_initial"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="invoice",
            options={"ordering": ["-period_start", "-version"]},
        ),
        migrations.AlterModelOptions(
            name="invoiceline",
            options={"ordering": ["late", "deployment_name", "kind"]},
        ),
        migrations.AddField(
            model_name="invoice",
            name="version",
            field=models.PositiveIntegerField(
                default=1,
                help_text="1, then one more each time the month is voided and re-issued.",
            ),
        ),
        migrations.AddField(
            model_name="invoiceline",
            name="late",
            field=models.BooleanField(
                default=False, help_text="Usage of an earlier month that landed after it closed."
            ),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="invoice",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="records",
                to="billing.invoice",
            ),
        ),
        migrations.RunPython(number_versions, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="invoice",
            constraint=models.UniqueConstraint(
                fields=("organization", "period_start", "version"), name="invoice_version_unique"
            ),
        ),
        migrations.RunPython(claim_closed_months, migrations.RunPython.noop),
        migrations.CreateModel(
            name="UsageDay",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("day", models.DateField()),
                ("deployment_name", models.CharField(blank=True, max_length=63)),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("gpu_seconds", "GPU-seconds"),
                            ("input_tokens", "Input tokens"),
                            ("output_tokens", "Output tokens"),
                            ("credit", "Credit"),
                        ],
                        max_length=16,
                    ),
                ),
                ("quantity", models.BigIntegerField(default=0)),
                ("amount_micros", models.BigIntegerField(default=0)),
                (
                    "organization",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="portal.organization",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("organization", "day", "deployment_name", "kind"),
                        name="usage_day_unique",
                    )
                ],
            },
        ),
        migrations.RunPython(sum_days, migrations.RunPython.noop),
    ]

from django.db import migrations, models


def seed_default_plan(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    if not Plan.objects.filter(is_default=True).exists():
        # Generous for a team trying Gantry, but bounded: an operator raises it per
        # organization (its Quota) or edits the plan in the admin.
        Plan.objects.get_or_create(
            name="starter",
            defaults={
                "is_default": True,
                "max_deployments": 50,
                "monthly_spend_limit_cents": 50_000,
            },
        )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0005_alter_invoiceline_kind_alter_usagerecord_kind_credit"),
    ]

    operations = [
        migrations.CreateModel(
            name="Plan",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=64, unique=True)),
                (
                    "is_default",
                    models.BooleanField(
                        default=False, help_text="New organizations get this plan's limits."
                    ),
                ),
                (
                    "max_deployments",
                    models.PositiveIntegerField(blank=True, help_text="Empty: no limit.", null=True),
                ),
                (
                    "monthly_spend_limit_cents",
                    models.PositiveBigIntegerField(
                        blank=True, help_text="Empty: no limit.", null=True
                    ),
                ),
                (
                    "max_gpus_per_type",
                    models.PositiveIntegerField(
                        blank=True,
                        help_text="GPUs of each listed GPU type, all regions together. "
                        "Empty: no limit.",
                        null=True,
                    ),
                ),
                (
                    "gpu_types",
                    models.CharField(
                        blank=True,
                        help_text="Comma-separated GPU-type codes max_gpus_per_type applies to.",
                        max_length=400,
                    ),
                ),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("is_default", True)),
                        fields=("is_default",),
                        name="plan_one_default",
                    )
                ],
            },
        ),
        migrations.RunPython(seed_default_plan, migrations.RunPython.noop),
    ]

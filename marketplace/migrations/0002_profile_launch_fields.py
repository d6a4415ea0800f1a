from django.db import migrations, models


class Migration(migrations.Migration):
    """What a profile's exact launch is rendered from: the quantized repos of a model, the
    engine version, KV-cache dtype and tensor parallel of a profile; and the fit's reason."""

    dependencies = [
        ("marketplace", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="catalogmodel",
            name="quant_repos",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="servingprofile",
            name="engine_version",
            field=models.CharField(
                blank=True, help_text="The engine version the launch is written for.", max_length=16
            ),
        ),
        migrations.AddField(
            model_name="servingprofile",
            name="kv_cache_dtype",
            field=models.CharField(default="auto", max_length=16),
        ),
        migrations.AddField(
            model_name="servingprofile",
            name="tensor_parallel",
            field=models.PositiveSmallIntegerField(
                blank=True, help_text="Default: the GPU count.", null=True
            ),
        ),
        migrations.AddField(
            model_name="servingprofile",
            name="parallel_reason",
            field=models.CharField(
                blank=True,
                help_text="Why tensor parallel differs from the GPU count.",
                max_length=300,
            ),
        ),
        migrations.AddField(
            model_name="servingprofile",
            name="fit_reason",
            field=models.TextField(blank=True),
        ),
        migrations.AlterField(
            model_name="servingprofile",
            name="engine_args",
            field=models.JSONField(
                blank=True, default=list, help_text="Extra flags beyond what the fields render."
            ),
        ),
    ]

from django.db import migrations, models


class Migration(migrations.Migration):
    """GPU prices carry where they come from. Rates already in the table were set by the
    operator (the starting rates included), so they get "operator's own price"."""

    dependencies = [
        ("billing", "0008_usagerecord_token_source"),
    ]

    operations = [
        migrations.AddField(
            model_name="gpurate",
            name="source",
            field=models.CharField(default="operator's own price", max_length=300),
        ),
        migrations.AddField(
            model_name="gpurate",
            name="as_of",
            field=models.DateField(
                blank=True, help_text="When the source was read.", null=True
            ),
        ),
    ]

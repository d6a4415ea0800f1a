from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0007_one_gpu_price"),
    ]

    operations = [
        migrations.AddField(
            model_name="replica",
            name="gpu_indices",
            field=models.JSONField(blank=True, default=list),
        ),
    ]

from django.db import migrations, models

SCALE_KINDS = ["autoscaled", "scaled", "stopped", "spend_limit"]


def mark_sleeping(apps, schema_editor):
    """Deployments at zero whose last change of size was the autoscaler's are asleep
    (so a request still wakes them); those a person or the spend limit stopped are not."""
    Deployment = apps.get_model("deployments", "Deployment")
    DeploymentEvent = apps.get_model("deployments", "DeploymentEvent")
    for d in Deployment.objects.filter(desired_replicas=0, deleted_at__isnull=True):
        last = (
            DeploymentEvent.objects.filter(deployment=d, kind__in=SCALE_KINDS)
            .order_by("-at", "-id")
            .first()
        )
        if last is not None and last.kind == "autoscaled":
            Deployment.objects.filter(pk=d.pk).update(asleep=True)


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0007_one_gpu_price"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="asleep",
            field=models.BooleanField(
                default=False,
                help_text=(
                    "At zero replicas because the autoscaler put it to sleep when idle: the "
                    "next request wakes it. A deployment a person (or the spend limit) "
                    "stopped stays down."
                ),
            ),
        ),
        migrations.RunPython(mark_sleeping, migrations.RunPython.noop),
    ]

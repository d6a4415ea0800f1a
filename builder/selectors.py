from django.db.models import QuerySet

from builder.models import Build, Upload


def build_list(*, org) -> QuerySet[Build]:
    """The organization's builds, newest first as the model orders them, with the catalog
    entry each list row shows."""
    return Build.objects.filter(organization=org).select_related("catalog_model")


def upload_list(*, org) -> QuerySet[Upload]:
    return Upload.objects.filter(organization=org)

from django.http import Http404
from django.shortcuts import get_object_or_404

from builder.models import Build, Upload


def access_build(org, pk) -> Build:
    if org is None:
        raise Http404
    return get_object_or_404(
        Build.objects.select_related("upload", "catalog_model"), organization=org, pk=pk
    )


def access_upload(org, pk) -> Upload:
    if org is None:
        raise Http404
    return get_object_or_404(Upload, organization=org, pk=pk)

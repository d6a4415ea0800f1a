"""The catalog's model files an organization may deploy (read by deployments through
``GANTRY_ARTIFACT_SOURCES``): those the public catalog's profiles and the organization's
own private entries name."""

from django.db.models import Q

from marketplace.models import ServingProfile


def organization_artifacts(organization):
    from deployments.artifacts import Artifacts

    found = Artifacts()
    refs = (
        ServingProfile.objects.filter(
            Q(model__organization__isnull=True) | Q(model__organization=organization)
        )
        .exclude(model_ref="")
        .values_list("model_ref", flat=True)
        .distinct()
    )
    for ref in refs:
        found.models[ref] = ref
    return found

from django.http import Http404
from django.shortcuts import get_object_or_404

from deployments.models import Deployment, DeploymentStatus, Replica
from portal.models import Organization


def access_deployment(org: Organization | None, pk) -> Deployment:
    if org is None:
        raise Http404
    return get_object_or_404(
        Deployment.objects.select_related("gpu_type", "organization", "weights__region").exclude(
            status=DeploymentStatus.DELETED
        ),
        organization=org,
        pk=pk,
    )


def access_replica(org: Organization | None, deployment_pk, pk) -> Replica:
    deployment = access_deployment(org, deployment_pk)
    return get_object_or_404(
        Replica.objects.select_related("pool", "node", "region"), deployment=deployment, pk=pk
    )

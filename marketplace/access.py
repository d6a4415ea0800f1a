from django.http import Http404

from marketplace import selectors
from marketplace.models import CatalogModel


def access_catalog_model(org, slug) -> CatalogModel:
    """A catalog entry this organization sees (public, or its own): else 404, the same for
    another organization's private entry as for one that does not exist."""
    model = selectors.catalog_get(org=org, slug=slug) if org is not None else None
    if model is None:
        raise Http404(f"No model {slug!r} in the catalog.")
    return model

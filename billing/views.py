from django.shortcuts import get_object_or_404, render

from billing.models import Invoice
from portal.access import require
from portal.views import org_required


@org_required
def invoice_detail(request, pk: int):
    """A printable invoice (members with the billing role)."""
    require(request.membership, "billing.view")
    invoice = get_object_or_404(
        Invoice.objects.prefetch_related("lines"), organization=request.org, pk=pk
    )
    return render(request, "billing/invoice.html", {"invoice": invoice})

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

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


@csrf_exempt  # Stripe signs the body instead; the signature is checked on the raw bytes
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    from billing import stripe_sync

    if not stripe_sync.enabled():
        return JsonResponse({"error": "Stripe is not configured."}, status=404)
    try:
        outcome = stripe_sync.webhook_handle(
            request.body, request.headers.get("Stripe-Signature", "")
        )
    except stripe_sync.WebhookRejected as exc:
        return JsonResponse({"error": f"Rejected: {exc}"}, status=400)
    return JsonResponse({"received": True, "outcome": outcome})

"""Usage and invoices through the API. Thin: parse, check access, call the services."""

from datetime import UTC, datetime, timedelta

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import api_view
from rest_framework.response import Response

from billing import selectors, services
from billing.models import Invoice, InvoiceLine
from portal.access import require


class UsageLineOut(serializers.Serializer):
    deployment = serializers.CharField()
    kind = serializers.CharField()
    quantity = serializers.IntegerField()
    amount = serializers.CharField(help_text="USD, to the micro-dollar")


def _when(value: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise serializers.ValidationError(
            {field: [f"Use an ISO 8601 date or time, e.g. 2026-11-01; got {value!r}."]}
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@extend_schema(
    parameters=[OpenApiParameter("start", str), OpenApiParameter("end", str)],
    responses=UsageLineOut(many=True),
)
@api_view(["GET"])
def usage(request):
    """Usage lines per deployment and kind between `start` and `end` (default: this
    month so far)."""
    require(request.membership, "usage.view")
    now = datetime.now(UTC)
    start = request.query_params.get("start")
    end = request.query_params.get("end")
    start_at = _when(start, "start") if start else selectors.month_bounds(now)[0]
    end_at = _when(end, "end") if end else now + timedelta(seconds=1)
    if end_at <= start_at:
        raise serializers.ValidationError({"end": ["end must be after start."]})
    lines = services.usage_lines(organization=request.org, start=start_at, end=end_at)
    return Response(UsageLineOut(lines, many=True).data)


class InvoiceLineOut(serializers.ModelSerializer):
    class Meta:
        model = InvoiceLine
        fields = ["deployment_name", "kind", "late", "quantity", "amount_cents"]


class InvoiceOut(serializers.ModelSerializer):
    period = serializers.SerializerMethodField()
    lines = InvoiceLineOut(many=True)

    class Meta:
        model = Invoice
        fields = ["id", "period", "version", "status", "total_cents", "closed_at", "lines"]

    def get_period(self, inv) -> str:
        return inv.period_start.strftime("%Y-%m")


class InvoiceViewSet(viewsets.GenericViewSet):
    serializer_class = InvoiceOut

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Invoice.objects.none()
        return Invoice.objects.filter(organization=self.request.org).prefetch_related("lines")

    def list(self, request):
        require(request.membership, "billing.view")
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(InvoiceOut(page, many=True).data)

    def retrieve(self, request, pk=None):
        require(request.membership, "billing.view")
        return Response(InvoiceOut(get_object_or_404(self.get_queryset(), pk=pk)).data)

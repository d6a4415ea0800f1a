"""A GPU-hour price says where it comes from: a named price list and the date it was read,
or explicitly the operator's own price."""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from billing.models import OPERATOR_PRICE, GpuRate
from billing.selectors import gpu_hour_provenance
from marketplace.services import catalog_load
from tests.conftest import owner_of


def test_starting_rates_are_marked_as_the_operators_own(db):
    rates = GpuRate.objects.all()
    assert rates and all(r.source == OPERATOR_PRICE and r.as_of is None for r in rates)
    assert gpu_hour_provenance()["h100-80gb"] == "operator's own price, from 2020-01-01"


def test_a_sourced_rate_needs_its_date_and_is_shown_with_it(db):
    rate = GpuRate(
        gpu_type="h200-141gb",
        cents_per_hour=349,
        effective_from=timezone.now() - timedelta(hours=1),
        source="Example Cloud on-demand list",
    )
    with pytest.raises(ValidationError) as exc:
        rate.full_clean()
    assert "as_of" in exc.value.message_dict
    with pytest.raises(ValidationError) as exc:
        GpuRate(gpu_type="x", cents_per_hour=1, effective_from=timezone.now(), source=" ").clean()
    assert "source" in exc.value.message_dict
    rate.as_of = date(2026, 11, 30)
    rate.full_clean()
    rate.save()
    assert gpu_hour_provenance()["h200-141gb"] == "Example Cloud on-demand list, as of 2026-11-30"
    # An older rate of the same type no longer speaks for the price.
    assert GpuRate.objects.filter(gpu_type="h200-141gb").count() == 2


def test_model_page_api_and_admin_show_where_the_price_comes_from(
    db, org_a, web_client, api_client_for, admin_client
):
    catalog_load()
    GpuRate.objects.create(
        gpu_type="h200-141gb",
        cents_per_hour=349,
        effective_from=datetime(2026, 12, 1, tzinfo=UTC),
        source="Example Cloud on-demand list",
        as_of=date(2026, 11, 30),
    )
    page = web_client(owner_of(org_a), org_a).get(
        reverse("marketplace:model", args=["deepseek-r1"])
    )
    text = page.content.decode()
    assert "$27.92/h" in text and "Example Cloud on-demand list, as of 2026-11-30" in text
    assert "operator&#x27;s own price, from 2020-01-01" in text  # the H100 and B200 rows
    profiles = api_client_for(org_a).get("/api/v1/models/deepseek-r1").json()["profiles"]
    by_name = {p["name"]: p for p in profiles}
    assert by_name["h200x8-fp8"]["price_per_hour"] == "27.92"
    assert by_name["h200x8-fp8"]["price_source"] == (
        "Example Cloud on-demand list, as of 2026-11-30"
    )
    changelist = admin_client.get("/admin/billing/gpurate/").content.decode()
    assert "Example Cloud on-demand list" in changelist and OPERATOR_PRICE in changelist.replace(
        "&#x27;", "'"
    )

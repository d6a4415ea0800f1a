from datetime import UTC, date, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from billing import services as billing
from billing.gpu_rates import ensure_default_rates
from billing.invoices import invoice_close
from billing.models import Quota
from portal.models import Role
from tests.conftest import owner_of


@pytest.fixture(autouse=True)
def rates(db):
    ensure_default_rates()


def test_usage_page_shows_spend_soft_alert_usage_and_invoices(org_a, web_client):
    Quota.objects.create(organization=org_a, monthly_spend_limit_cents=100, soft_alert_percent=50)
    now = timezone.now().replace(second=0, microsecond=0)
    billing.meter_gpu_time(
        organization_id=org_a.pk,
        source="r1",
        deployment_id=1,
        deployment_name="chat",
        region="local",
        gpu_type="h100-80gb",
        gpus=4,
        start=now - timedelta(minutes=10),
        end=now,
        final=True,
    )
    invoice_close(organization=org_a, period_start=date(2026, 1, 1))
    page = web_client(owner_of(org_a), org_a).get(reverse("deployments:usage")).content.decode()
    spent = billing.month_spend_cents(org_a)
    assert spent == round(10 * 240 * 299 * 10_000 / 3600 / 10_000)  # 40 GPU-minutes of H100
    assert f"${spent / 100:,.2f}" in page
    assert 'data-testid="soft-alert"' in page or "spend limit is reached" in page
    assert "chat" in page and "gpu_seconds" in page and "January 2026" in page
    assert 'id="usage-chart"' in page and "uplot" in page.lower()


def test_members_without_the_billing_role_do_not_see_invoices(
    org_a, web_client, make_user, add_member
):
    invoice = invoice_close(organization=org_a, period_start=date(2026, 1, 1))
    dev = add_member(org_a, make_user("dev"), Role.MEMBER)
    client = web_client(dev.user, org_a)
    assert "Invoices" not in client.get(reverse("deployments:usage")).content.decode()
    assert client.get(reverse("billing:invoice", args=[invoice.pk])).status_code == 403
    acct = add_member(org_a, make_user("acct"), Role.BILLING)
    page = web_client(acct.user, org_a).get(reverse("billing:invoice", args=[invoice.pk]))
    assert page.status_code == 200 and "Invoice — Alpha, January 2026" in page.content.decode()


def test_month_start_helper_rolls_over_december():
    assert billing.next_month(date(2026, 12, 1)) == date(2027, 1, 1)
    assert billing.month_start(datetime(2026, 5, 31, 23, 59, tzinfo=UTC)) == date(2026, 5, 1)


def test_staff_credit_enters_the_ledger_and_lowers_the_invoice(org_a, make_user, web_client):
    now = timezone.now()
    billing.meter_gpu_time(
        organization_id=org_a.pk,
        source="r1",
        deployment_id=1,
        deployment_name="chat",
        region="eu-west",
        gpu_type="h100-80gb",
        gpus=8,
        start=now.replace(second=0, microsecond=0) - timedelta(minutes=30),
        end=now.replace(second=0, microsecond=0),
        final=True,
    )
    before = billing.month_spend_cents(org_a)
    billing.credit_issue(organization=org_a, amount_cents=500, reason="outage on the 3rd")
    assert billing.month_spend_cents(org_a) == before - 500
    with pytest.raises(Exception, match="positive amount"):
        billing.credit_issue(organization=org_a, amount_cents=0, reason="x")
    staff = make_user("ops", is_staff=True)
    client = web_client(staff)
    page = client.get(reverse("deployments:capacity")).content.decode()
    assert "Revenue this month" in page and "eu-west" in page

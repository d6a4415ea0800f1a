"""Invoices are exact: every ledger row is invoiced exactly once (late rows on the next
invoice), totals are the sum of their lines, re-issue keeps the rows."""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db.models import Sum

from billing import services as billing
from billing.gpu_rates import ensure_default_rates
from billing.invoices import (
    invoice_close,
    invoice_reissue,
    invoices_close_month,
    micros_to_cents,
)
from billing.models import Invoice, UsageRecord

JAN = date(2026, 1, 1)
FEB = date(2026, 2, 1)


@pytest.fixture(autouse=True)
def rates(db):
    ensure_default_rates()


def gpu(org, start, minutes, source="r1", name="chat"):
    billing.meter_gpu_time(
        organization_id=org.pk,
        source=source,
        deployment_id=1,
        deployment_name=name,
        region="eu",
        gpu_type="h100-80gb",
        gpus=1,
        start=start,
        end=start + timedelta(minutes=minutes),
        final=True,
    )


def lines(invoice):
    return list(invoice.lines.values_list("late", "deployment_name", "kind", "quantity"))


def test_cents_round_half_away_from_zero_in_integers():
    assert [micros_to_cents(m) for m in (0, 4_999, 5_000, 14_999, 15_000, 10**15 + 5_000)] == [
        0,
        0,
        1,
        1,
        2,
        10**11 + 1,
    ]
    assert [micros_to_cents(m) for m in (-4_999, -5_000, -15_000)] == [0, -1, -2]


def test_usage_after_close_is_carried_once_to_the_next_invoice_as_a_late_line(org_a, org_b):
    gpu(org_a, datetime(2026, 1, 10, tzinfo=UTC), 30)
    jan = invoice_close(organization=org_a, period_start=JAN)
    jan_lines = lines(jan)
    assert jan.status == "closed" and jan_lines == [(False, "chat", "gpu_seconds", 1800)]
    # A replica's last minutes of January reach the ledger after January closed.
    for _ in range(3):  # replayed: the ledger keys keep them once
        gpu(org_a, datetime(2026, 1, 31, 23, 50, tzinfo=UTC), 10, source="r2")
    gpu(org_a, datetime(2026, 2, 3, tzinfo=UTC), 5)
    gpu(org_b, datetime(2026, 1, 31, 23, 55, tzinfo=UTC), 5)  # another org's: not ours
    for _ in range(3):  # closing again, whatever the order, changes nothing
        assert lines(invoice_close(organization=org_a, period_start=JAN)) == jan_lines
        feb = invoice_close(organization=org_a, period_start=FEB)
        assert lines(feb) == [
            (False, "chat", "gpu_seconds", 300),
            (True, "chat", "gpu_seconds", 600),
        ]
    # Every row of the ledger is on exactly one invoice, and the money adds up.
    rows = UsageRecord.objects.filter(organization=org_a)
    assert not rows.filter(invoice__isnull=True).exists()
    assert rows.filter(invoice=jan).count() == 30 and rows.filter(invoice=feb).count() == 15
    for invoice in (jan, feb):
        invoice.refresh_from_db()
        micros = rows.filter(invoice=invoice).aggregate(m=Sum("amount_micros"))["m"]
        assert invoice.total_cents == sum(invoice.lines.values_list("amount_cents", flat=True))
        assert abs(invoice.total_cents * 10_000 - micros) <= 5_000 * invoice.lines.count()


def test_the_monthly_close_finds_organizations_with_only_late_usage(org_a):
    gpu(org_a, datetime(2026, 1, 10, tzinfo=UTC), 2)
    assert invoices_close_month(period_start=JAN) == 1
    gpu(org_a, datetime(2026, 1, 31, 23, 58, tzinfo=UTC), 2, source="late")
    for expected in (1, 0, 0):  # once carried, nothing is left to close
        assert invoices_close_month(period_start=FEB) == expected
    feb = Invoice.objects.get(organization=org_a, period_start=FEB)
    assert lines(feb) == [(True, "chat", "gpu_seconds", 120)]


def test_a_credit_dated_in_a_closed_month_lowers_the_next_invoice(org_a):
    gpu(org_a, datetime(2026, 1, 10, tzinfo=UTC), 60)
    jan = invoice_close(organization=org_a, period_start=JAN)
    billing.credit_issue(
        organization=org_a,
        amount_cents=150,
        reason="outage on the 9th",
        at=datetime(2026, 1, 20, tzinfo=UTC),
    )
    gpu(org_a, datetime(2026, 2, 10, tzinfo=UTC), 60)
    feb = invoice_close(organization=org_a, period_start=FEB)
    assert feb.total_cents == jan.total_cents - 150 == 299 - 150
    assert (True, "", "credit", 1) in lines(feb)
    with pytest.raises(ValidationError, match="future"):
        billing.credit_issue(
            organization=org_a,
            amount_cents=1,
            reason="x",
            at=datetime(2999, 1, 1, tzinfo=UTC),
        )


def test_reissue_voids_and_issues_the_next_version_from_the_same_rows(org_a):
    gpu(org_a, datetime(2026, 1, 10, tzinfo=UTC), 30)
    v1 = invoice_close(organization=org_a, period_start=JAN)
    invoice = v1
    for version in (2, 3, 4):  # re-issued three times
        invoice = invoice_reissue(invoice_id=invoice.pk)
        assert invoice.version == version and invoice.status == "closed"
        assert lines(invoice) == lines(v1) and invoice.total_cents == v1.total_cents
    assert list(Invoice.objects.filter(organization=org_a).values_list("version", "status")) == [
        (4, "closed"),
        (3, "void"),
        (2, "void"),
        (1, "void"),
    ]
    assert UsageRecord.objects.filter(invoice=invoice).count() == 30
    assert invoice_close(organization=org_a, period_start=JAN).pk == invoice.pk
    with pytest.raises(ValidationError, match="void already"):
        invoice_reissue(invoice_id=v1.pk)


def test_an_open_month_is_a_preview_that_claims_nothing(org_a):
    from django.utils import timezone

    now = timezone.now().replace(second=0, microsecond=0)
    gpu(org_a, now - timedelta(minutes=5), 3)
    current = invoice_close(organization=org_a, period_start=now.date())
    assert current.status == "open" and lines(current)[0][3] == 180
    assert not UsageRecord.objects.filter(invoice__isnull=False).exists()

"""Money and limits. The layers above describe what they use as data (GPU-type and region
codes, deployment ids and names); billing never imports them."""

from django.db import models
from django.db.models import Q

from portal.models import Organization


class UsageKind(models.TextChoices):
    GPU_SECONDS = "gpu_seconds", "GPU-seconds"
    INPUT_TOKENS = "input_tokens", "Input tokens"
    OUTPUT_TOKENS = "output_tokens", "Output tokens"
    CREDIT = "credit", "Credit"


class TokenSource(models.TextChoices):
    ENGINE = "engine", "Reported by the engine"
    COUNTED = "counted", "Counted by the gateway"


class BillingAccount(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAST_DUE = "past_due", "Past due"
        SUSPENDED = "suspended", "Suspended"

    class OverLimit(models.TextChoices):
        REFUSE = "refuse", "Refuse new capacity"
        STOP = "stop", "Refuse new capacity and scale running deployments to zero"

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="billing_account"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    plan = models.CharField(max_length=32, default="pay-as-you-go")
    over_limit = models.CharField(max_length=8, choices=OverLimit.choices, default=OverLimit.REFUSE)
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    soft_alert_sent_for = models.DateField(
        null=True, blank=True, help_text="Month the soft alert was last raised."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.organization} ({self.status})"


class Quota(models.Model):
    """An organization's limits. Its row is also the lock every capacity decision of the
    organization takes, so concurrent deploys cannot together exceed it."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="quota"
    )
    max_deployments = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: no limit."
    )
    monthly_spend_limit_cents = models.PositiveBigIntegerField(null=True, blank=True)
    soft_alert_percent = models.PositiveSmallIntegerField(default=80)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"quota of {self.organization}"


class GpuQuota(models.Model):
    """At most `max_gpus` of a GPU type in a region ("" = all regions together)."""

    quota = models.ForeignKey(Quota, on_delete=models.CASCADE, related_name="gpu_limits")
    region = models.CharField(max_length=32, blank=True, help_text="Region code; empty: all.")
    gpu_type = models.CharField(max_length=32, help_text="GPU-type code, e.g. h100-80gb.")
    max_gpus = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["quota", "region", "gpu_type"], name="gpu_quota_unique")
        ]

    def __str__(self) -> str:
        return f"{self.gpu_type}@{self.region or 'all'} ≤ {self.max_gpus}"


class GpuRate(models.Model):
    """Price of one GPU-hour of a GPU type, from `effective_from` on."""

    gpu_type = models.CharField(max_length=32)
    cents_per_hour = models.PositiveIntegerField()
    effective_from = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["gpu_type", "effective_from"], name="gpu_rate_unique")
        ]
        ordering = ["gpu_type", "-effective_from"]

    def __str__(self) -> str:
        return f"{self.gpu_type} {self.cents_per_hour}¢/h from {self.effective_from:%Y-%m-%d}"


class TokenRate(models.Model):
    """Price per million tokens of a model ("*" = any model without its own rate)."""

    model = models.CharField(max_length=100, default="*")
    input_cents_per_million = models.PositiveIntegerField()
    output_cents_per_million = models.PositiveIntegerField()
    effective_from = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="token_rate_unique")
        ]
        ordering = ["model", "-effective_from"]

    def __str__(self) -> str:
        return f"{self.model} in {self.input_cents_per_million}/out {self.output_cents_per_million}"


class UsageRecord(models.Model):
    """The append-only ledger. One row per (source, window); the idempotency key makes a
    replayed or duplicated write a no-op. Amounts in micro-dollars (integers)."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="usage")
    kind = models.CharField(max_length=16, choices=UsageKind.choices)
    quantity = models.BigIntegerField()
    amount_micros = models.BigIntegerField(help_text="Priced at the rate in force.")
    window_start = models.DateTimeField(db_index=True)
    window_end = models.DateTimeField()
    deployment_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    deployment_name = models.CharField(max_length=63, blank=True)
    region = models.CharField(max_length=32, blank=True)
    gpu_type = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=100, blank=True)
    token_source = models.CharField(
        max_length=8,
        choices=TokenSource.choices,
        blank=True,
        help_text="For token usage: reported by the engine, or counted by the gateway.",
    )
    idempotency_key = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "window_start"], name="usage_org_window")]

    def __str__(self) -> str:
        return f"{self.kind} {self.quantity} ({self.idempotency_key})"


class Invoice(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"
        VOID = "void", "Void"

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="invoices"
    )
    period_start = models.DateField(help_text="First day of the month.")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    total_cents = models.BigIntegerField(default=0)
    closed_at = models.DateTimeField(null=True, blank=True)
    stripe_invoice_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "period_start"],
                condition=~Q(status="void"),
                name="invoice_one_per_month",
            )
        ]
        ordering = ["-period_start"]

    def __str__(self) -> str:
        return f"{self.organization} {self.period_start:%Y-%m}"


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    deployment_name = models.CharField(max_length=63, blank=True)
    kind = models.CharField(max_length=16, choices=UsageKind.choices)
    quantity = models.BigIntegerField()
    amount_cents = models.BigIntegerField()

    class Meta:
        ordering = ["deployment_name", "kind"]

    def __str__(self) -> str:
        return f"{self.deployment_name} {self.kind} {self.amount_cents}¢"


class StripeEvent(models.Model):
    """Webhook events already handled: Stripe retries and replays, each counts once."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class Credit(models.Model):
    """A credit staff grant; it enters the ledger as a negative amount."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="credits")
    amount_cents = models.PositiveIntegerField()
    reason = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.amount_cents}¢ to {self.organization}: {self.reason}"

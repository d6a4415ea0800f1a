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


OPERATOR_PRICE = "operator's own price"


class GpuRate(models.Model):
    """Price of one GPU-hour of a GPU type, from `effective_from` on."""

    gpu_type = models.CharField(max_length=32)
    cents_per_hour = models.PositiveIntegerField()
    effective_from = models.DateTimeField()
    # Where the price comes from: a published price list (its name or address) read on
    # `as_of`, or OPERATOR_PRICE — the operator set it, no outside source.
    source = models.CharField(max_length=300, default=OPERATOR_PRICE)
    as_of = models.DateField(null=True, blank=True, help_text="When the source was read.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["gpu_type", "effective_from"], name="gpu_rate_unique")
        ]
        ordering = ["gpu_type", "-effective_from"]

    def __str__(self) -> str:
        return f"{self.gpu_type} {self.cents_per_hour}¢/h from {self.effective_from:%Y-%m-%d}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if not self.source.strip():
            raise ValidationError({"source": f"Name the price list, or write {OPERATOR_PRICE!r}."})
        if self.source != OPERATOR_PRICE and self.as_of is None:
            raise ValidationError({"as_of": "Give the date the source was read."})

    @property
    def provenance(self) -> str:
        if self.source == OPERATOR_PRICE:
            return f"{OPERATOR_PRICE}, from {self.effective_from:%Y-%m-%d}"
        return f"{self.source}, as of {self.as_of:%Y-%m-%d}" if self.as_of else self.source


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
    replayed or duplicated write a no-op. Amounts in micro-dollars (integers).

    `invoice` is the one column written after the fact: the closed invoice that counted the
    row. A row is claimed once, so it is invoiced once; a row that lands after its month
    closed is still unclaimed and goes on the next invoice as late usage."""

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
    invoice = models.ForeignKey(
        "Invoice", on_delete=models.PROTECT, null=True, blank=True, related_name="records"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Covering: the usage read path sums the rows of a cut day from the index alone
        # (an index-only scan), without visiting rows scattered over the table.
        indexes = [
            models.Index(
                fields=["organization", "window_start"],
                include=["deployment_name", "kind", "quantity", "amount_micros"],
                name="usage_org_window_covering",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.quantity} ({self.idempotency_key})"


class UsageDay(models.Model):
    """The ledger summed per organization, UTC day, deployment and kind. usage_ingest adds
    the rows it actually inserted (never a duplicate) in the same transaction, so a day
    here always equals the sum of its ledger rows; the read path (usage page, usage API,
    month spend) sums days instead of rows."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    deployment_name = models.CharField(max_length=63, blank=True)
    kind = models.CharField(max_length=16, choices=UsageKind.choices)
    quantity = models.BigIntegerField(default=0)
    amount_micros = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "day", "deployment_name", "kind"], name="usage_day_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.day} {self.deployment_name} {self.kind}"


class Invoice(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"
        VOID = "void", "Void"

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="invoices"
    )
    period_start = models.DateField(help_text="First day of the month.")
    version = models.PositiveIntegerField(
        default=1, help_text="1, then one more each time the month is voided and re-issued."
    )
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
            ),
            models.UniqueConstraint(
                fields=["organization", "period_start", "version"], name="invoice_version_unique"
            ),
        ]
        ordering = ["-period_start", "-version"]

    def __str__(self) -> str:
        version = f" v{self.version}" if self.version > 1 else ""
        return f"{self.organization} {self.period_start:%Y-%m}{version}"

    @property
    def identity(self) -> str:
        """What this invoice is, whenever it is pushed: Stripe idempotency keys and metadata
        derive from it, never from the time of the call or the row id."""
        return f"gantry-{self.organization_id}-{self.period_start:%Y-%m}-v{self.version}"


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    deployment_name = models.CharField(max_length=63, blank=True)
    kind = models.CharField(max_length=16, choices=UsageKind.choices)
    late = models.BooleanField(
        default=False, help_text="Usage of an earlier month that landed after it closed."
    )
    quantity = models.BigIntegerField()
    amount_cents = models.BigIntegerField()

    class Meta:
        ordering = ["late", "deployment_name", "kind"]

    def __str__(self) -> str:
        late = " (late)" if self.late else ""
        return f"{self.deployment_name} {self.kind}{late} {self.amount_cents}¢"

    @property
    def key(self) -> str:
        """The line's identity within its invoice (for Stripe idempotency and metadata)."""
        return f"{self.deployment_name}:{self.kind}:{'late' if self.late else 'period'}"


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


class Plan(models.Model):
    """Default limits a new organization starts with; operators edit plans in the admin.
    A plan's values are copied into an organization's Quota when that is first made, so
    editing a plan changes organizations from then on, and each Quota stays editable."""

    name = models.CharField(max_length=64, unique=True)
    is_default = models.BooleanField(
        default=False, help_text="New organizations get this plan's limits."
    )
    max_deployments = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: no limit."
    )
    monthly_spend_limit_cents = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Empty: no limit."
    )
    max_gpus_per_type = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="GPUs of each listed GPU type, all regions together. Empty: no limit.",
    )
    gpu_types = models.CharField(
        max_length=400,
        blank=True,
        help_text="Comma-separated GPU-type codes max_gpus_per_type applies to.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=Q(is_default=True), name="plan_one_default"
            )
        ]

    def __str__(self) -> str:
        return self.name + (" (default)" if self.is_default else "")

from django.contrib import admin, messages

from billing import services
from billing.invoices import invoice_reissue
from billing.models import (
    BillingAccount,
    Credit,
    GpuQuota,
    GpuRate,
    Invoice,
    InvoiceLine,
    Plan,
    Quota,
    TokenRate,
    UsageRecord,
)


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ["organization", "status", "plan", "over_limit", "stripe_customer_id"]
    list_filter = ["status", "plan", "over_limit"]
    search_fields = ["organization__slug"]
    actions = ["suspend", "activate"]

    @admin.action(description="Suspend (new capacity refused)")
    def suspend(self, request, queryset):
        queryset.update(status=BillingAccount.Status.SUSPENDED)

    @admin.action(description="Activate")
    def activate(self, request, queryset):
        queryset.update(status=BillingAccount.Status.ACTIVE)


class GpuQuotaInline(admin.TabularInline):
    model = GpuQuota
    extra = 1


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = [
        "organization",
        "max_deployments",
        "monthly_spend_limit_cents",
        "soft_alert_percent",
    ]
    search_fields = ["organization__slug"]
    inlines = [GpuQuotaInline]


@admin.register(GpuRate)
class GpuRateAdmin(admin.ModelAdmin):
    list_display = ["gpu_type", "cents_per_hour", "effective_from", "source", "as_of"]
    list_filter = ["gpu_type"]
    search_fields = ["gpu_type", "source"]


@admin.register(TokenRate)
class TokenRateAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "input_cents_per_million",
        "output_cents_per_million",
        "effective_from",
    ]


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = [
        "organization",
        "kind",
        "quantity",
        "amount_micros",
        "deployment_name",
        "window_start",
        "idempotency_key",
    ]
    list_filter = ["kind", "gpu_type", "region"]
    search_fields = ["organization__slug", "deployment_name", "idempotency_key"]
    date_hierarchy = "window_start"
    list_select_related = ["organization"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the ledger is append-only

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    readonly_fields = ["deployment_name", "kind", "late", "quantity", "amount_cents"]
    can_delete = False


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = [
        "organization",
        "period_start",
        "version",
        "status",
        "total_cents",
        "closed_at",
        "stripe_invoice_id",
    ]
    list_filter = ["status", "period_start"]
    search_fields = ["organization__slug"]
    inlines = [InvoiceLineInline]
    readonly_fields = ["version", "total_cents", "closed_at", "stripe_invoice_id"]
    actions = ["void_and_reissue", "resync_stripe"]

    @admin.action(description="Re-sync to Stripe")
    def resync_stripe(self, request, queryset):
        from billing import stripe_sync
        from billing.tasks import push_invoice

        if not stripe_sync.enabled():
            messages.error(request, "Stripe is not configured.")
            return
        for invoice in queryset.filter(status=Invoice.Status.CLOSED):
            push_invoice.delay(invoice.pk)
        messages.info(request, "Queued.")

    @admin.action(description="Void and re-issue from the ledger")
    def void_and_reissue(self, request, queryset):
        for invoice in queryset.exclude(status=Invoice.Status.VOID):
            new = invoice_reissue(invoice_id=invoice.pk)
            messages.info(request, f"{invoice} re-issued as {new}: {new.total_cents}¢")


@admin.register(Credit)
class CreditAdmin(admin.ModelAdmin):
    list_display = ["organization", "amount_cents", "reason", "created_at"]
    search_fields = ["organization__slug", "reason"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # a credit is in the ledger; issue another to correct it

    def save_model(self, request, obj, form, change):
        credit = services.credit_issue(
            organization=obj.organization, amount_cents=obj.amount_cents, reason=obj.reason
        )
        obj.pk = credit.pk


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "is_default",
        "max_deployments",
        "monthly_spend_limit_cents",
        "max_gpus_per_type",
        "gpu_types",
    ]

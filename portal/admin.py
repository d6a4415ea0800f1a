from django.contrib import admin

from portal.models import ApiKey, Invitation, Membership, Organization


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "personal", "created_at"]
    search_fields = ["slug", "name"]
    list_filter = ["personal"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["organization", "user", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["organization__slug", "user__username", "user__email"]
    list_select_related = ["organization", "user"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "organization", "role", "created_at", "sent_at", "accepted_at"]
    search_fields = ["email", "organization__slug"]
    list_select_related = ["organization"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    # The digest is useless to a person and is kept out of the page.
    list_display = [
        "prefix",
        "name",
        "organization",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at"]
    search_fields = ["prefix", "name", "organization__slug"]
    exclude = ["digest"]
    readonly_fields = ["prefix", "organization", "created_by", "created_at", "last_used_at"]
    list_select_related = ["organization", "created_by"]

    def has_add_permission(self, request) -> bool:
        return False  # keys are minted in the portal or by `create_api_key`, shown once

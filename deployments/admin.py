from django import forms
from django.contrib import admin

from deployments.models import (
    Deployment,
    DeploymentEvent,
    GpuPool,
    GpuType,
    Node,
    Region,
    Replica,
    WeightsFetch,
)


@admin.register(GpuType)
class GpuTypeAdmin(admin.ModelAdmin):
    # No price here: a GPU-hour's one price is the billing rate table (GPU rates).
    list_display = ["code", "name", "memory_gb"]


class PoolInline(admin.TabularInline):
    model = GpuPool
    extra = 0
    fields = ["name", "driver", "gpu_type", "enabled", "healthy"]
    show_change_link = True


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "location", "latitude", "longitude", "enabled"]
    list_editable = ["enabled"]
    inlines = [PoolInline]


class NodeInline(admin.TabularInline):
    model = Node
    extra = 1
    fields = ["name", "address", "gpus_total", "gpus_allocated", "healthy", "config"]
    readonly_fields = ["gpus_allocated"]


class PoolForm(forms.ModelForm):
    class Meta:
        model = GpuPool
        fields = [
            "region",
            "name",
            "driver",
            "gpu_type",
            "config",
            "allowed_images",
            "runs_org_builds",
            "engine_fetches_weights",
            "enabled",
        ]
        widgets = {
            "config": forms.Textarea(attrs={"rows": 4}),
            "allowed_images": forms.Textarea(attrs={"rows": 3}),
        }
        help_texts = {
            "config": 'JSON. docker: {"docker_url": "tcp://gpu-host:2376", '
            '"port_range": [30000, 30999]}; kubernetes: {"namespace": "gantry", '
            '"node_selector": {…}}; local: {}.'
        }


@admin.register(GpuPool)
class GpuPoolAdmin(admin.ModelAdmin):
    form = PoolForm
    list_display = ["__str__", "driver", "gpu_type", "enabled", "healthy", "health_message"]
    list_filter = ["driver", "gpu_type", "region", "healthy"]
    list_select_related = ["region", "gpu_type"]
    readonly_fields = ["healthy", "health_message", "checked_at"]
    inlines = [NodeInline]


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["__str__", "address", "gpus_total", "gpus_allocated", "healthy"]
    list_filter = ["pool__region", "pool__gpu_type", "healthy"]
    list_select_related = ["pool__region"]
    readonly_fields = ["gpus_allocated"]


class EventInline(admin.TabularInline):
    model = DeploymentEvent
    extra = 0
    fields = ["at", "kind", "message"]
    readonly_fields = fields
    can_delete = False
    ordering = ["-at"]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "organization",
        "status",
        "desired_replicas",
        "gpu_type",
        "gpus_per_replica",
        "created_at",
    ]
    list_filter = ["status", "engine", "gpu_type"]
    search_fields = ["name", "organization__slug"]
    list_select_related = ["organization", "gpu_type"]
    readonly_fields = [
        "status",
        "status_reason",
        "failure_count",
        "next_attempt_at",
        "lease_owner",
        "lease_until",
        "deleted_at",
        "created_at",
        "updated_at",
    ]
    inlines = [EventInline]


@admin.register(Replica)
class ReplicaAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "region", "pool", "node", "gpus", "url", "created_at"]
    list_filter = ["status", "region"]
    list_select_related = ["deployment__organization", "region", "pool", "node"]
    readonly_fields = [f.name for f in Replica._meta.fields]


@admin.register(WeightsFetch)
class WeightsFetchAdmin(admin.ModelAdmin):
    list_display = ["__str__", "status", "bytes_done", "bytes_total", "attempts", "updated_at"]
    list_filter = ["status", "region"]
    list_select_related = ["region"]
    search_fields = ["repo", "filename"]
    # Rows are the fetch task's; staff read them (and delete a stale one), never edit.
    readonly_fields = [f.name for f in WeightsFetch._meta.fields]

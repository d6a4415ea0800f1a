"""The composition root's URLs: every app's pages and API are mounted here."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from billing import api as billing_api
from builder import api as builder_api
from deployments import api as deployments_api
from lab import api as lab_api
from lab import tuning_api as lab_tuning_api
from marketplace import api as marketplace_api
from portal import api, views
from portal.converters import ID_PATTERN


class IdRouter(SimpleRouter):
    """Object URLs match only ids (a viewset keyed by something else sets its own
    ``lookup_value_regex``), so ``/deployments/abc`` is a 404, not a failed query."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # DRF's fallback when a viewset sets no lookup_value_regex (its default: [^/.]+).
        self._default_value_pattern = ID_PATTERN


router = IdRouter(trailing_slash="")
router.register("organizations", api.OrganizationViewSet, basename="organization")
router.register("keys", api.ApiKeyViewSet, basename="apikey")
router.register("members", api.MemberViewSet, basename="member")
router.register("invitations", api.InvitationViewSet, basename="invitation")
# `model` and `build` reach this viewset as deployment sources (deployments.sources).
router.register("deployments", deployments_api.DeploymentViewSet, basename="deployment")
router.register("models", marketplace_api.CatalogViewSet, basename="model")
router.register("builds", builder_api.BuildViewSet, basename="build")
router.register("uploads", builder_api.UploadViewSet, basename="upload")
router.register("invoices", billing_api.InvoiceViewSet, basename="invoice")
router.register("benchmarks", lab_api.BenchmarkViewSet, basename="benchmark")
router.register("tunings", lab_tuning_api.TuningViewSet, basename="tuning")

portal_patterns = (
    [
        path("", views.dashboard, name="dashboard"),
        path("signup/", views.signup, name="signup"),
        path("organizations/", views.organization_list, name="organizations"),
        path("organizations/<slug:slug>/switch/", views.organization_switch, name="org_switch"),
        path("keys/", views.api_key_list, name="api_keys"),
        path("keys/<id:pk>/revoke/", views.api_key_revoke, name="api_key_revoke"),
        path("keys/hub-token/", views.hub_token_set, name="hub_token"),
        path("members/", views.member_list, name="members"),
        path("members/<id:pk>/role/", views.member_update, name="member_update"),
        path("members/<id:pk>/remove/", views.member_remove, name="member_remove"),
        path("invitations/<id:pk>/revoke/", views.invitation_revoke, name="invitation_revoke"),
        path("invite/<str:token>/", views.invitation_accept, name="invitation_accept"),
    ],
    "portal",
)

api_v1 = [
    path("me", api.me, name="me"),
    path("hub-token", api.hub_token, name="hub-token"),
    path("regions", deployments_api.region_list, name="regions"),
    path("gpu-types", deployments_api.gpu_type_list, name="gpu-types"),
    path("capacity", deployments_api.capacity, name="capacity"),
    path("engines", deployments_api.engine_list, name="engines"),
    path("usage", billing_api.usage, name="usage"),
    path("quotas", deployments_api.quotas, name="quotas"),
    path("leaderboard", lab_tuning_api.leaderboard, name="leaderboard"),
    path("leaderboard/export", lab_tuning_api.leaderboard_export, name="leaderboard-export"),
    path("leaderboard/import", lab_tuning_api.leaderboard_import, name="leaderboard-import"),
    *router.urls,
]

urlpatterns = [
    path("", include(portal_patterns)),
    path("", include("deployments.urls")),
    path("", include("marketplace.urls")),
    path("", include("builder.urls")),
    path("", include("billing.urls")),
    path("", include("lab.urls")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("admin/", admin.site.urls),
    path("api/v1/", include((api_v1, "api"))),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]

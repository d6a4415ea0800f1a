from django.urls import path

from deployments import views

app_name = "deployments"

urlpatterns = [
    path("deployments/", views.deployment_list, name="list"),
    path("deployments/new/", views.deployment_create, name="create"),
    path("deployments/<int:pk>/", views.deployment_detail, name="detail"),
    path("deployments/<int:pk>/scale/", views.deployment_scale, name="scale"),
    path("deployments/<int:pk>/stop/", views.deployment_stop, name="stop"),
    path("deployments/<int:pk>/start/", views.deployment_start, name="start"),
    path("deployments/<int:pk>/delete/", views.deployment_delete, name="delete"),
    path(
        "deployments/<int:pk>/replicas/<int:replica_pk>/logs/",
        views.replica_logs,
        name="replica_logs",
    ),
    path("capacity/", views.capacity, name="capacity"),
    path("billing/", views.usage_page, name="usage"),
]

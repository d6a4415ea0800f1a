from django.urls import path

from deployments import views

app_name = "deployments"

urlpatterns = [
    path("deployments/", views.deployment_list, name="list"),
    path("deployments/new/", views.deployment_create, name="create"),
    path("deployments/<id:pk>/", views.deployment_detail, name="detail"),
    path("deployments/<id:pk>/scale/", views.deployment_scale, name="scale"),
    path(
        "deployments/<id:pk>/weights/retry/", views.deployment_weights_retry, name="weights_retry"
    ),
    path("deployments/<id:pk>/serving/", views.deployment_serving, name="serving"),
    path("deployments/<id:pk>/stop/", views.deployment_stop, name="stop"),
    path("deployments/<id:pk>/start/", views.deployment_start, name="start"),
    path("deployments/<id:pk>/delete/", views.deployment_delete, name="delete"),
    path(
        "deployments/<id:pk>/replicas/<id:replica_pk>/logs/",
        views.replica_logs,
        name="replica_logs",
    ),
    path(
        "deployments/<id:pk>/playground/token/",
        views.playground_token,
        name="playground_token",
    ),
    path("deployments/<id:pk>/playground/cost/", views.playground_cost, name="playground_cost"),
    path("playground/compare/", views.playground_compare, name="playground_compare"),
    path("capacity/", views.capacity, name="capacity"),
    path("billing/", views.usage_page, name="usage"),
]

from django.urls import path

from builder import views

app_name = "builder"

urlpatterns = [
    path("builds/", views.build_list, name="list"),
    path("builds/new/", views.build_new, name="new"),
    path("builds/<id:pk>/", views.build_detail, name="detail"),
    path("builds/<id:pk>/configure/", views.build_configure, name="configure"),
    path("builds/<id:pk>/start/", views.build_start, name="start"),
]

from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("billing/invoices/<id:pk>/", views.invoice_detail, name="invoice"),
    path("billing/stripe/webhook", views.stripe_webhook, name="stripe_webhook"),
]

"""`uvicorn gateway.asgi:app` — the gateway process."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django.setup()

from gateway.app import create_app  # noqa: E402

app = create_app()

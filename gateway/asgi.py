"""`uvicorn gateway.asgi:app --no-proxy-headers` — the gateway process.

Without `--no-proxy-headers` uvicorn itself would take the client's address from
`X-Forwarded-For` on any request from 127.0.0.1 (its FORWARDED_ALLOW_IPS default), before
the gateway could judge it; the gateway believes forwarded headers only from
GATEWAY_TRUSTED_PROXIES.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django.setup()

from gateway.app import create_app  # noqa: E402

app = create_app()

from rest_framework import authentication, exceptions

from portal.services import api_key_authenticate


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer gk_…``. The request acts as the key's creator, inside the
    key's organization only."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != self.keyword.lower():
            raise exceptions.AuthenticationFailed("Send the key as 'Authorization: Bearer gk_…'.")
        key = api_key_authenticate(parts[1])
        if key is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API key.")
        return key.created_by, key

    def authenticate_header(self, request):
        return self.keyword


try:
    from drf_spectacular.extensions import OpenApiAuthenticationExtension
except ImportError:  # pragma: no cover - the schema package is a hard dependency
    OpenApiAuthenticationExtension = None

if OpenApiAuthenticationExtension is not None:

    class ApiKeyScheme(OpenApiAuthenticationExtension):
        target_class = "portal.authentication.ApiKeyAuthentication"
        name = "apiKey"

        def get_security_definition(self, auto_schema):
            return {"type": "http", "scheme": "bearer", "description": "An API key, gk_…"}

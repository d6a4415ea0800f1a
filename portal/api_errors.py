"""Error answers of the API: always JSON, never Django's HTML pages, never a bare 500.

DRF's own exceptions (400, 401, 403, 404, 405, 415, 429) already answer JSON through
``exception_handler``. What DRF never sees — a URL no route matches, a body too large, an
exception that escapes a view, an error raised in middleware — is turned into JSON by
``ApiErrorMiddleware`` for every ``/api/`` path, with DEBUG on or off.
"""

import logging
import re
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger("gantry.api")

API_PREFIX = "/api/"
REQUEST_ID_HEADER = "X-Request-ID"
# A caller's own request id is echoed only when it is short and plain, so it cannot carry
# markup or line breaks into logs.
_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")

SERVER_ERROR_DETAIL = "The server failed to answer this request; quote the request id."


def exception_handler(exc, context):
    """Services raise Django's ValidationError; the API answers it as a 400 per field."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        exc = exceptions.ValidationError(detail)
    return drf_exception_handler(exc, context)


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX)


def _is_json(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


def server_error_response(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {"detail": SERVER_ERROR_DETAIL, "request_id": request.request_id}, status=500
    )


class ApiErrorMiddleware:
    """Outermost middleware: gives each request an id and keeps API errors in JSON."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        request.request_id = given if _CALLER_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        if _is_api(request) and self._too_large(request):
            response = JsonResponse(
                {
                    "detail": "The request body is too large: at most "
                    f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
                },
                status=413,
            )
        else:
            response = self.get_response(request)
            if _is_api(request) and response.status_code >= 400 and not _is_json(response):
                response = self._as_json(request, response)
        response[REQUEST_ID_HEADER] = request.request_id
        return response

    def process_exception(self, request: HttpRequest, exception: Exception):
        """An exception that escaped an API view: log it with the id, answer JSON 500."""
        if not _is_api(request):
            return None
        logger.error(
            "Unhandled API error request_id=%s %s %s",
            request.request_id,
            request.method,
            request.path_info,
            exc_info=exception,
        )
        return server_error_response(request)

    @staticmethod
    def _too_large(request: HttpRequest) -> bool:
        # Uploads have their own endpoint and limits (streamed to disk by the file handler).
        if request.content_type == "multipart/form-data":
            return False
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return False
        return length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    @staticmethod
    def _as_json(request: HttpRequest, response: HttpResponse) -> HttpResponse:
        """Django's own error pages (404 from the resolver, 400, 403 CSRF, 500 from a
        middleware) answered in the API's shape instead."""
        if response.status_code >= 500:
            # Django already logged the traceback as "Internal Server Error: <path>".
            logger.error("API error page replaced request_id=%s", request.request_id)
            return server_error_response(request)
        detail = response.reason_phrase or "Error"
        if response.status_code == 404:
            detail = "Not found."
        json_response = JsonResponse({"detail": detail}, status=response.status_code)
        for header in ("Allow", "Retry-After", "WWW-Authenticate"):
            if header in response:
                json_response[header] = response[header]
        return json_response

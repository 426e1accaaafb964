"""Every error the API answers has one shape: {"detail": a sentence, "code": a word for
programs, "fields": {field: [messages]}} (fields empty unless the input was invalid), whatever
raised it: DRF (401, 403, 404, 405, 415, 429, validation), Django's Http404 and
PermissionDenied from vservers.access, or an action the server's state refuses (409)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, serializers, status
from rest_framework.views import exception_handler as drf_exception_handler

from vservers import actions

# Made with type(): a field called "fields" cannot be written in a class body, where it would
# shadow Serializer.fields (the metaclass takes it out of the class again, but mypy objects).
ErrorSerializer = type("ErrorSerializer", (serializers.Serializer,), {
    "__doc__": "Every error's body.",
    "detail": serializers.CharField(help_text="what went wrong, in a sentence"),
    "code": serializers.CharField(help_text="a word for programs: not_found, permission_denied, invalid, refused, ..."),
    "fields": serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                    help_text="for invalid input: the messages by field"),
})


class Refused(exceptions.APIException):
    """An action the server's state or the tenant's quota does not allow now."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "refused"
    default_code = "refused"


def refused(exc: actions.ActionRefused) -> Refused:
    code = "quota" if isinstance(exc, actions.QuotaExceeded) else "refused"
    return Refused(str(exc), code=code)


def _flatten(data, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested validation errors as {"field" or "field.inner": [messages]}."""
    if isinstance(data, dict):
        found: dict[str, list[str]] = {}
        for key, value in data.items():
            found.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return found
    if isinstance(data, list) and data and all(isinstance(item, dict | list) for item in data):
        found = {}
        for index, item in enumerate(data):
            found.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return found
    messages = data if isinstance(data, list) else [data]
    return {prefix or "non_field_errors": [str(message) for message in messages]}


def exception_handler(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, actions.ActionRefused):
        exc = refused(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.values()), ["invalid input"])[0]
        body = {"detail": f"invalid input: {first}", "code": "invalid", "fields": fields}
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        body = {"detail": str(detail), "code": str(code), "fields": {}}
    response.data = body
    return response


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def not_found(request, exception=None):
    """Django's 404 handler, except under /api/: the API's error in JSON."""
    if _is_api(request):
        return JsonResponse({"detail": "Not found.", "code": "not_found", "fields": {}}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _is_api(request):
        return JsonResponse({"detail": "A server error occurred.", "code": "error", "fields": {}}, status=500)
    return defaults.server_error(request)

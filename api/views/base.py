"""What every API view shares: the audit of writes made with a token, ETags, filters and
pages, and the answer to an action (202 with the operation it queued)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from django.utils.cache import patch_cache_control
from django.utils.http import parse_etags
from rest_framework import generics, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import AuditEntry
from vservers import access

from ..models import ApiToken
from ..permissions import Operator
from ..serializers import OperationSerializer


class ApiView(generics.GenericAPIView):
    """Every write made with a token is audited ("api.write": the token's prefix, method,
    path and answer), besides the entry the action itself records; a 429 is not, or a
    throttled client could fill the log."""

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        token = getattr(request, "auth", None) if isinstance(request, Request) else None
        if (
            isinstance(token, ApiToken)
            and request.method not in permissions.SAFE_METHODS
            and response.status_code != status.HTTP_429_TOO_MANY_REQUESTS
        ):
            AuditEntry.record(request, "api.write", token, tenant=token.tenant, method=request.method,
                              path=request.path[:200], status=response.status_code, scope=token.scope)
        return response

    def filters(self, serializer_class: type[serializers.Serializer]) -> dict:
        """The query's filters, checked by SERIALIZER_CLASS (400 for one that is not one)."""
        checked = serializer_class(data=self.request.query_params)
        checked.is_valid(raise_exception=True)
        return {key: value for key, value in checked.validated_data.items() if value not in (None, "")}

    def paged(self, queryset, serializer_class) -> Response:
        page = self.paginate_queryset(queryset)
        data = serializer_class(page, many=True, context=self.get_serializer_context()).data
        return self.get_paginated_response(data)

    def can_act(self) -> bool:
        """Whether this request may change anything: the user's role (vservers.access) and
        the token's scope."""
        from ..permissions import token_may_write

        token = self.request.auth
        return access.can_act(self.request.user) and (not isinstance(token, ApiToken) or token_may_write(token))


class OperatorView(ApiView):
    permission_classes = [*ApiView.permission_classes, Operator]


class PageQuery(serializers.Serializer):
    page = serializers.IntegerField(min_value=1, required=False)
    page_size = serializers.IntegerField(min_value=1, max_value=200, required=False)


def queued(request, operation) -> Response:
    """202: the operation is queued; its URL tells how it went."""
    data = OperationSerializer(operation, context={"request": request}).data
    return Response(data, status=status.HTTP_202_ACCEPTED,
                    headers={"Location": f"/api/v1/operations/{operation.uuid}/"})


def conditional(request, parts: tuple, build: Callable[[], Response]) -> Response:
    """BUILD's answer with an ETag made of PARTS (and the user, their role and the query), or
    a bodiless 304 when the client has it already: as the server list's polled rows, one
    aggregate query decides and nothing is serialized while nothing changed."""
    key = "|".join(str(part) for part in (*parts, request.user.pk, request.user.is_staff,
                                          access.can_act(request.user), request.META.get("QUERY_STRING", "")))
    etag = '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'
    if etag in parse_etags(request.headers.get("If-None-Match", "")):
        response = Response(status=status.HTTP_304_NOT_MODIFIED)
    else:
        response = build()
    response["ETag"] = etag
    patch_cache_control(response, private=True, no_cache=True)
    return response

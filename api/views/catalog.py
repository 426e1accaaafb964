"""What a tenant chooses from (plans, templates) and who the caller is (me)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from vservers import access, actions
from vservers.models import Plan, Template

from ..models import ApiToken
from ..serializers import MeSerializer, PlanSerializer, TemplateSerializer
from .base import ApiView, PageQuery


class PlanListView(ApiView):
    @extend_schema(parameters=[PageQuery], responses={200: PlanSerializer(many=True)})
    def get(self, request):
        """The plans offered for new servers and plan changes."""
        self.filters(PageQuery)
        return self.paged(Plan.objects.filter(is_active=True).order_by("memory_mb", "name", "pk"), PlanSerializer)


class TemplateListView(ApiView):
    @extend_schema(parameters=[PageQuery], responses={200: TemplateSerializer(many=True)})
    def get(self, request):
        """The systems offered for new servers."""
        self.filters(PageQuery)
        return self.paged(Template.objects.filter(is_active=True).order_by("name", "pk"), TemplateSerializer)


class MeView(ApiView):
    @extend_schema(responses={200: MeSerializer})
    def get(self, request):
        """Who this request is: the user, their tenant and role, the tenant's quotas and what
        its servers take of them, and the token used."""
        user, token = request.user, request.auth
        member = access.membership(user)
        tenant = member.tenant if member else None
        usage = actions.tenant_usage(tenant) if tenant else None
        data = {
            "username": user.get_username(),
            "is_operator": access.is_operator(user),
            "tenant": tenant.slug if tenant else None,
            "role": member.role if member else None,
            "can_act": self.can_act(),
            "quota": tenant,
            "usage": usage,
            "token": token if isinstance(token, ApiToken) else None,
        }
        return Response(MeSerializer(data).data)

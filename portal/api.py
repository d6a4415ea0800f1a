"""REST API for tenancy. Thin: parse, check access, call the same services as the pages."""

from django.db import transaction
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import api_view
from rest_framework.response import Response

from portal import selectors, services
from portal.access import (
    access_api_key,
    access_api_key_to_revoke,
    access_invitation,
    access_membership,
    access_membership_to_remove,
    require,
)
from portal.models import ApiKey, Invitation, Membership, Organization, Role

# --- Output ---------------------------------------------------------------------------


class OrganizationOut(serializers.ModelSerializer):
    class Meta:
        model = Organization
        fields = ["slug", "name", "personal", "created_at"]


class ApiKeyOut(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username")
    active = serializers.BooleanField(source="is_active")

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "created_by",
            "created_at",
            "last_used_at",
            "revoked_at",
            "active",
            "requests_per_minute",
            "tokens_per_minute",
        ]


class ApiKeyCreatedOut(ApiKeyOut):
    key = serializers.CharField(help_text="The whole key. Shown in this answer only.")

    class Meta(ApiKeyOut.Meta):
        fields = [*ApiKeyOut.Meta.fields, "key"]


class MembershipOut(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")
    email = serializers.CharField(source="user.email")

    class Meta:
        model = Membership
        fields = ["id", "username", "email", "role", "created_at"]


class InvitationOut(serializers.ModelSerializer):
    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "created_at", "sent_at"]


# --- Input ----------------------------------------------------------------------------


class OrganizationIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    slug = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")


class ApiKeyIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    requests_per_minute = serializers.IntegerField(required=False, allow_null=True, default=None)
    tokens_per_minute = serializers.IntegerField(required=False, allow_null=True, default=None)


class InvitationIn(serializers.Serializer):
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class RoleIn(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


# --- Views ----------------------------------------------------------------------------


class OrganizationViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The organizations you belong to (with an API key: the key's organization)."""

    serializer_class = OrganizationOut

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Organization.objects.none()
        if isinstance(self.request.auth, ApiKey):
            return Organization.objects.filter(pk=self.request.org.pk)
        return selectors.organization_list_for_user(user=self.request.user)

    @extend_schema(request=OrganizationIn, responses={201: OrganizationOut})
    def create(self, request):
        data = OrganizationIn(data=request.data)
        data.is_valid(raise_exception=True)
        org = services.organization_create(owner=request.user, **data.validated_data)
        return Response(OrganizationOut(org).data, status=status.HTTP_201_CREATED)


class ApiKeyViewSet(viewsets.GenericViewSet):
    serializer_class = ApiKeyOut

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ApiKey.objects.none()
        return selectors.api_key_list(org=self.request.org)

    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ApiKeyOut(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(ApiKeyOut(access_api_key(request.org, pk)).data)

    @extend_schema(request=ApiKeyIn, responses={201: ApiKeyCreatedOut})
    def create(self, request):
        require(request.membership, "keys.create")
        data = ApiKeyIn(data=request.data)
        data.is_valid(raise_exception=True)
        key, raw = services.api_key_create(
            organization=request.org, user=request.user, **data.validated_data
        )
        body = ApiKeyOut(key).data | {"key": raw}
        response = Response(body, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        """Revoke the key. It stops authenticating at once; the row stays for the record."""
        key = access_api_key_to_revoke(request.membership, pk)
        services.api_key_revoke(api_key=key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MemberViewSet(viewsets.GenericViewSet):
    serializer_class = MembershipOut

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Membership.objects.none()
        return selectors.membership_list(org=self.request.org)

    def list(self, request):
        require(request.membership, "members.view")
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(MembershipOut(page, many=True).data)

    def retrieve(self, request, pk=None):
        require(request.membership, "members.view")
        return Response(MembershipOut(access_membership(request.org, pk)).data)

    @extend_schema(request=RoleIn, responses=MembershipOut)
    def partial_update(self, request, pk=None):
        membership = access_membership(request.org, pk)
        require(request.membership, "members.manage")
        data = RoleIn(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_update_role(
            actor=request.membership, membership=membership, role=data.validated_data["role"]
        )
        return Response(MembershipOut(membership).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        membership = access_membership_to_remove(request.membership, pk)
        services.membership_remove(actor=request.membership, membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationViewSet(viewsets.GenericViewSet):
    serializer_class = InvitationOut

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Invitation.objects.none()
        return selectors.invitation_open_list(org=self.request.org)

    def list(self, request):
        require(request.membership, "members.view")
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(InvitationOut(page, many=True).data)

    @extend_schema(request=InvitationIn, responses={201: InvitationOut})
    def create(self, request):
        require(request.membership, "members.manage")
        data = InvitationIn(data=request.data)
        data.is_valid(raise_exception=True)
        invitation = services.invitation_create(actor=request.membership, **data.validated_data)
        return Response(InvitationOut(invitation).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        invitation = access_invitation(request.org, pk)
        require(request.membership, "members.manage")
        with transaction.atomic():
            services.invitation_revoke(invitation=invitation)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(
    responses=inline_serializer(
        "Me",
        {
            "username": serializers.CharField(),
            "organization": OrganizationOut(),
            "role": serializers.CharField(),
            "auth": serializers.CharField(),
        },
    )
)
@api_view(["GET"])
def me(request):
    """Who is asking, in which organization, with which role."""
    return Response(
        {
            "username": request.user.username,
            "organization": OrganizationOut(request.org).data,
            "role": request.membership.role,
            "auth": "api_key" if isinstance(request.auth, ApiKey) else "session",
        }
    )


class HubTokenIn(serializers.Serializer):
    token = serializers.JSONField(help_text='The organization\'s hub token; "" clears it.')


HubTokenOut = inline_serializer("HubToken", {"set": serializers.BooleanField()})


@extend_schema(methods=["PUT"], request=HubTokenIn, responses=HubTokenOut)
@extend_schema(methods=["GET"], responses=HubTokenOut)
@api_view(["GET", "PUT"])
def hub_token(request):
    """Whether the organization has a hub token (never the token itself); PUT sets it."""
    if request.method == "PUT":
        require(request.membership, "keys.manage")
        data = HubTokenIn(data=request.data)
        data.is_valid(raise_exception=True)
        services.organization_hub_token_set(
            organization=request.org, token=data.validated_data["token"]
        )
        request.org.refresh_from_db()
    return Response({"set": bool(request.org.hub_token_encrypted)})

"""Members of a tenant, removed and given another role in the operator's area (tenant detail
page): audited, and a tenant never loses its last admin. Rows only (offline_world)."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from accounts.models import AuditEntry, Membership


@pytest.fixture
def world(offline_world, django_user_model):
    """offline_world, with a second admin (alex) and a read-only member (rita) in Acme."""
    w = offline_world
    w.alex = django_user_model.objects.create_user("alex", "alex@acme.test", "alex password 1")
    Membership.objects.create(user=w.alex, tenant=w.acme, role=Membership.ADMIN)
    w.rita = django_user_model.objects.create_user("rita", "rita@acme.test", "rita password 1")
    Membership.objects.create(user=w.rita, tenant=w.acme, role=Membership.READONLY)
    return w


@pytest.fixture
def op_client(client, world):
    client.force_login(world.operator)
    return client


def remove(client, tenant, user):
    return client.post(reverse("op_member_remove", args=[tenant.uuid, user.pk]), follow=True)


def set_role(client, tenant, user, role):
    return client.post(reverse("op_member_role", args=[tenant.uuid, user.pk]), {"role": role}, follow=True)


def said(response) -> str:
    return " ".join(str(m) for m in get_messages(response.wsgi_request))


def role(user) -> str:
    return Membership.objects.get(user=user).role


def test_the_tenant_page_offers_role_change_and_removal(op_client, world):
    body = op_client.get(reverse("op_tenant_detail", args=[world.acme.uuid])).content.decode()
    for user in (world.alice, world.alex, world.rita):
        assert f'action="{reverse("op_member_remove", args=[world.acme.uuid, user.pk])}"' in body
        assert f'action="{reverse("op_member_role", args=[world.acme.uuid, user.pk])}"' in body
    assert 'data-confirm="Remove rita from Acme? Their account is disabled."' in body


def test_removing_a_member_disables_the_account_and_is_audited(op_client, client, world):
    remover = op_client
    response = remove(remover, world.acme, world.rita)
    assert "rita is removed from Acme" in said(response)
    assert not Membership.objects.filter(user=world.rita).exists()
    world.rita.refresh_from_db()
    assert not world.rita.is_active
    entry = AuditEntry.objects.get(action="member.remove")
    assert (entry.actor, entry.tenant, entry.details) == (
        world.operator, world.acme, {"username": "rita", "role": Membership.READONLY})
    assert not client.login(username="rita", password="rita password 1")  # noqa: S106 - the test's own


def test_a_role_changes_and_is_audited(op_client, world):
    response = set_role(op_client, world.acme, world.rita, Membership.ADMIN)
    assert "rita is now tenant admin" in said(response)
    assert role(world.rita) == Membership.ADMIN
    entry = AuditEntry.objects.get(action="member.role")
    assert entry.details == {"username": "rita", "role": "admin", "was": "readonly"}
    assert set_role(op_client, world.acme, world.alice, Membership.READONLY).status_code == 200
    assert role(world.alice) == Membership.READONLY
    # The same role again changes nothing and records nothing.
    assert "already has this role" in said(set_role(op_client, world.acme, world.alice, Membership.READONLY))
    assert AuditEntry.objects.filter(action="member.role").count() == 2
    # No such role: a message, nothing changes.
    assert "choose a role" in said(set_role(op_client, world.acme, world.alice, "owner"))
    assert role(world.alice) == Membership.READONLY


def test_the_last_admin_can_be_neither_removed_nor_demoted(op_client, world):
    assert "alex is removed" in said(remove(op_client, world.acme, world.alex))  # alice is left
    response = remove(op_client, world.acme, world.alice)
    assert "alice was not removed: alice is the last admin of Acme; make another member an admin first." in said(
        response)
    response = set_role(op_client, world.acme, world.alice, Membership.READONLY)
    assert "alice is the last admin of Acme" in said(response)
    assert role(world.alice) == Membership.ADMIN
    world.alice.refresh_from_db()
    assert world.alice.is_active
    assert AuditEntry.objects.filter(action__in=["member.remove", "member.role"]).count() == 1  # alex's removal
    # With another admin, alice may go.
    set_role(op_client, world.acme, world.rita, Membership.ADMIN)
    assert "alice is removed" in said(remove(op_client, world.acme, world.alice))


def test_members_are_found_only_in_their_own_tenant(op_client, world):
    # bob is Globex's: under Acme's URL he is not found.
    assert op_client.post(reverse("op_member_remove", args=[world.acme.uuid, world.bob.pk])).status_code == 404
    assert op_client.post(reverse("op_member_role", args=[world.acme.uuid, world.bob.pk]),
                          {"role": "readonly"}).status_code == 404
    assert Membership.objects.get(user=world.bob).tenant == world.globex


def test_tenant_admins_cannot_manage_members_here(client, world):
    client.force_login(world.alice)
    assert client.post(reverse("op_member_remove", args=[world.acme.uuid, world.rita.pk])).status_code == 403
    assert client.post(reverse("op_member_role", args=[world.acme.uuid, world.rita.pk]),
                       {"role": "admin"}).status_code == 403
    assert role(world.rita) == Membership.READONLY
    assert client.get(reverse("op_member_remove", args=[world.acme.uuid, world.rita.pk])).status_code == 403

"""Template builds (actions.build_template, jobs.run_template_build, jobs.record_templates): a
real build of busybox through the worker on the tests' own engine installation, what the
Templates page shows from the rows the worker wrote, and one build at a time per template and
node."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from accounts.models import AuditEntry
from vservers import actions, reconcile
from vservers.engine import templates
from vservers.models import BuiltTemplate, OperationStatus, Template, TemplateBuild


def test_a_build_runs_on_the_worker_and_the_page_shows_what_it_made(world, drain, client):
    from django.utils import timezone

    before = templates.get(world.engine.config, "busybox")
    # The reconcile run records what is built already (the session's build).
    reconcile.reconcile_node(world.node.pk)
    assert BuiltTemplate.objects.get(template=world.busybox).version == before.version

    client.force_login(world.operator)
    response = client.post(f"/operator/templates/{world.busybox.name}/build/", follow=True)
    assert "A build of busybox is queued on local." in response.content.decode()
    build = TemplateBuild.objects.get()
    assert (build.status, build.requested_by, build.node) == (OperationStatus.QUEUED, world.operator, world.node)
    assert AuditEntry.objects.filter(action="template.build", actor=world.operator).count() == 1
    # Asked again while it waits: no second build on that node.
    again = client.post(f"/operator/templates/{world.busybox.name}/build/", follow=True).content.decode()
    assert "a build on local is queued or running already" in again
    assert TemplateBuild.objects.count() == 1

    drain()
    build.refresh_from_db()
    assert build.status == OperationStatus.SUCCEEDED, build.error + build.detail
    after = templates.get(world.engine.config, "busybox")
    assert after.version != before.version and after.size_bytes > 0
    recorded = BuiltTemplate.objects.get(template=world.busybox, node=world.node)
    assert (recorded.version, recorded.size_bytes) == (after.version, after.size_bytes)
    assert abs(recorded.built_at.timestamp() - after.built_at) < 1 and recorded.checked <= timezone.now()
    assert f"Built busybox version {after.version}" in build.output

    page = client.get("/operator/templates/").content.decode()
    assert after.version in page and "Rebuild" in page and "Succeeded" in page

    # A server made now gets the new version.
    assert world.engine.config.templates_dir.joinpath("busybox", after.version, "rootfs", "bin").is_dir()


def test_a_template_the_engine_does_not_know_fails_with_its_reason(world, drain):
    unknown = Template.objects.create(name="plan9", display_name="Plan 9")
    [build] = actions.build_template(unknown, world.operator)
    drain()
    build.refresh_from_db()
    assert build.status == OperationStatus.FAILED
    assert "unknown template 'plan9'" in build.error
    reconcile.reconcile_node(world.node.pk)
    assert not BuiltTemplate.objects.filter(template=unknown).exists()
    # A failed build does not block the next one.
    assert isinstance(actions.build_template(unknown, world.operator)[0], TemplateBuild)


@pytest.mark.both_databases
def test_one_pending_build_per_template_and_node_is_the_databases_rule_too(offline_world):
    w = offline_world
    TemplateBuild.objects.create(template=w.busybox, node=w.node)
    with pytest.raises(IntegrityError), transaction.atomic():
        TemplateBuild.objects.create(template=w.busybox, node=w.node, status=OperationStatus.RUNNING)
    TemplateBuild.objects.create(template=w.busybox, node=w.node, status=OperationStatus.FAILED)


def test_the_page_reads_the_rows_and_says_not_built(offline_world, client):
    from django.utils import timezone

    w = offline_world
    BuiltTemplate.objects.filter(template=w.busybox).delete()  # the world has it built
    client.force_login(w.operator)
    page = client.get("/operator/templates/").content.decode()
    assert "not built" in page and ">Build</button>" in page
    BuiltTemplate.objects.create(template=w.busybox, node=w.node, version="20261206-100000-abcdef",
                                 size_bytes=3 * 2**20, built_at=timezone.now(), checked=timezone.now())
    page = client.get("/operator/templates/").content.decode()
    assert "20261206-100000-abcdef" in page and "3.0\xa0MB" in page and ">Rebuild</button>" in page


def test_tenants_cannot_build(offline_world, client):
    client.force_login(offline_world.alice)
    assert client.post("/operator/templates/busybox/build/").status_code == 403
    assert not TemplateBuild.objects.exists()

"""A plan's disk I/O limits in the operator's area: the form takes what the engine takes
(vservers.jobs.plan_limits hands them over), refuses the rest with a reason, and the list shows
them. Queueing is not involved: these tests need neither Redis nor the kernel."""

from __future__ import annotations

import pytest
from django.urls import reverse

from vservers.engine import validate
from vservers.jobs import plan_limits
from vservers.models import Plan

PLAN = {"name": "disky", "cpus": "1", "memory_mb": 512, "disk_mb": 4096, "pids": 256, "is_active": "on"}


@pytest.fixture
def op_client(client, offline_world):
    client.force_login(offline_world.operator)
    return client


def test_a_plan_with_io_limits_reaches_the_engine_in_bytes(op_client):
    response = op_client.post(reverse("op_plans"), {
        **PLAN, "io_weight": 300, "io_read_mbps": 50, "io_write_mbps": 10, "io_read_iops": 500, "io_write_iops": 200,
    })
    assert response.status_code == 302
    plan = Plan.objects.get(name="disky")
    limits = plan_limits(plan).validated()  # what the worker hands the engine, checked as it would be
    assert (limits.io_weight, limits.io_read_bps, limits.io_write_bps, limits.io_read_iops, limits.io_write_iops) == (
        300, 50 * 10**6, 10 * 10**6, 500, 200)
    page = op_client.get(reverse("op_plans")).content.decode()
    assert "weight 300" in page and "write 10 MB/s, 200 ops/s" in page


def test_io_limits_left_empty_mean_an_even_weight_and_no_ceilings(op_client):
    assert op_client.post(reverse("op_plans"), PLAN).status_code == 302
    limits = plan_limits(Plan.objects.get(name="disky"))
    assert (limits.io_weight, limits.io_read_bps, limits.io_write_bps, limits.io_read_iops, limits.io_write_iops) == (
        100, None, None, None, None)


def test_an_edit_that_leaves_the_weight_out_keeps_it(op_client):
    op_client.post(reverse("op_plans"), {**PLAN, "io_weight": 700})
    plan = Plan.objects.get(name="disky")
    response = op_client.post(reverse("op_plan_edit", args=[plan.uuid]), {**PLAN, "io_weight": "", "io_write_mbps": 5})
    assert response.status_code == 302
    plan.refresh_from_db()
    assert (plan.io_weight, plan.io_write_mbps) == (100, 5)  # empty is the default, said in the help text


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("io_weight", 0, "between 1 and 10000"),
        ("io_weight", 10_001, "between 1 and 10000"),
        ("io_weight", "lots", "whole number"),
        ("io_write_mbps", 0, "between 1 and"),
        ("io_read_mbps", 10**9, "between 1 and"),
        ("io_write_iops", 0, "between 10 and"),
        ("io_read_iops", 5, "between 10 and"),
        ("io_read_iops", 10**9, "between 10 and"),
        ("io_write_iops", -1, ""),
    ],
)
def test_bad_io_limits_are_refused_with_a_reason(op_client, field, value, reason):
    response = op_client.post(reverse("op_plans"), {**PLAN, field: value})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == [field]
    assert reason in errors[field][0]
    assert not Plan.objects.filter(name="disky").exists()


def test_the_forms_bounds_are_the_engines():
    # The smallest and largest a plan can say are ones the engine takes.
    assert validate.io_bps(1 * 10**6) == 10**6
    assert validate.io_bps(validate.MAX_IO_BPS // 10**6 * 10**6)
    assert validate.io_iops(validate.MIN_IO_IOPS) == 10

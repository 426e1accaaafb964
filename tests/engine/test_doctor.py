"""`vserver doctor`'s measured check: what moving a process into a server's cgroups costs."""

from __future__ import annotations

from vservers.engine import doctor
from vservers.engine.cgroups import detect


def test_a_migration_is_measured_in_a_scratch_group_that_is_gone_afterwards(engine, config):
    backend = detect(config)
    before = set(backend.names())
    latency = doctor.migration_latency_ms(config, probes=2, idle=0.03)
    # A write to cgroup.procs: microseconds, or a grace period of the kernel's (milliseconds),
    # never more than a second.
    assert 0 < latency < 1000
    assert set(backend.names()) == before  # the scratch group went with the probe


def test_a_slow_migration_is_a_warning_with_its_fix_never_a_missing_feature():
    slow = doctor.migration_verdict(6.7)
    assert (slow.ok, slow.required) == (False, False)
    assert "6.7 ms" in slow.detail and "each start" in slow.detail and "favordynmods" in slow.fix
    quick = doctor.migration_verdict(0.06)
    assert (quick.ok, quick.required) == (True, False) and "0.06 ms" in quick.detail

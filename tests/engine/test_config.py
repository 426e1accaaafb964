"""The engine's settings from the environment: good values taken, bad ones named."""

from __future__ import annotations

import pytest

from vservers.engine import EngineConfig
from vservers.engine.errors import InvalidInput


def test_loop_direct_io_is_on_by_default_and_can_be_switched_off():
    assert EngineConfig.from_env({}).loop_direct_io
    assert not EngineConfig.from_env({"VSERVER_LOOP_DIRECT_IO": "0"}).loop_direct_io
    assert not EngineConfig.from_env({"VSERVER_LOOP_DIRECT_IO": "off"}).loop_direct_io
    assert EngineConfig.from_env({"VSERVER_LOOP_DIRECT_IO": "1"}).loop_direct_io
    with pytest.raises(InvalidInput, match="VSERVER_LOOP_DIRECT_IO must be 1 or 0, not 'maybe'"):
        EngineConfig.from_env({"VSERVER_LOOP_DIRECT_IO": "maybe"})


def test_host_wide_names_are_the_same_digests_as_before_digest_py():
    # The installation id, and from it the cgroup parent and veth prefix, are SHA-256 prefixes
    # of the root (digest.py, no longer hashlib's): an installation's existing cgroups and veths
    # keep their names. Literal values, computed with hashlib.sha256 before the change.
    config = EngineConfig.from_env({"VSERVER_ROOT": "/var/lib/vservers-test"})
    assert (config.install_id, config.cgroup_parent, config.veth_prefix) == ("61e744", "vservers-61e744", "vs61e7")
    assert EngineConfig.from_env({}).cgroup_parent == "vservers"
    with pytest.raises(InvalidInput, match="VSERVER_ROOT must be an absolute path, not 'var/x'"):
        EngineConfig.from_env({"VSERVER_ROOT": "var/x"})

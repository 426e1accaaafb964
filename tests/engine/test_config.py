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

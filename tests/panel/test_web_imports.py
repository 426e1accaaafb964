"""The web process never loads the engine's kernel side: its views and forms import only the
engine's plain modules (names, sizes, errors, specs), which touch nothing at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What the panel may import from the engine: no namespaces, mounts, cgroups, netlink, seccomp.
PLAIN_ENGINE_MODULES = {
    "vservers.engine",
    "vservers.engine.config",
    "vservers.engine.errors",
    "vservers.engine.spec",
    "vservers.engine.validate",
}
WORKER_SIDE = {"vservers.jobs", "vservers.reconcile", "vservers.worker", "pyroute2"}

PROBE = """
import json, sys
import django
django.setup()
from django.urls import get_resolver
get_resolver().url_patterns  # every view module of every URL conf
import panel.wsgi
import panel.asgi  # the console's WebSocket side: Channels and consoles.consumers
print(json.dumps(sorted(sys.modules)))
"""


def test_the_web_process_imports_no_engine_module_that_touches_the_kernel():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "panel.settings", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    engine = {name for name in loaded if name == "vservers.engine" or name.startswith("vservers.engine.")}
    # At most these (vservers.engine's names load on first use since issue 17), and the validators
    # the forms use for certain.
    assert engine <= PLAIN_ENGINE_MODULES and "vservers.engine.validate" in engine
    assert not loaded & WORKER_SIDE
    assert "vservers.views.tenant" in loaded  # the probe really loaded the views
    assert "consoles.consumers" in loaded  # and the console's consumer

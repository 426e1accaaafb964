"""The session's cold builds, started in the background as the session begins.

pytest-django runs the database-only tests first (about six minutes of `make test`, on one of
the two CPUs); the first test that needs a server comes after them. The two builds a clean
clone must make, the busybox compile (about 70 s) and the Debian template's debootstrap
(about 50 s), run meanwhile in a process of their own at a lower priority, so the fixtures that
need them find them done instead of building them in the foreground:

- busybox: `busybox.ensure_binary` into the tests' cache (tests/leaks.TEST_CACHE). It takes the
  cache's lock, so a fixture that asks before it is done waits for it, and one that asks when
  it failed compiles it itself (and fails with the same sentence if the failure is real).
- debian: `templates.build` into an installation of its own under the cache, kept by
  tests/template_cache.py and lent to the engine's tests; removed after.

These are the same code paths as before, from an empty cache (the compile) and an empty root
(the build), in the same session: only where and when they run changed. The session waits for
the process before it ends, so nothing it started outlives the session.

Run by tests/conftest.py as `python -m tests.prebuild STATUS_FILE WHAT...`; STATUS_FILE gets
{what: {"seconds": s, "error": sentence or null, "finished": unix time}} for each build.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from tests.leaks import TEST_CACHE, TEST_ENV

BUSYBOX_USERS = frozenset({"engine", "panel_engine", "cluster_nodes"})  # session fixtures that build busybox
DEBIAN_USERS = frozenset({"debian_template"})
STATUS = Path(TEST_CACHE) / "prebuild.json"
LOG = Path(TEST_CACHE) / "prebuild.log"
BUILD_ROOT = Path(TEST_CACHE) / "prebuild-root"
NICENESS = "10"  # below the tests themselves, which keep their CPU


def wanted(items) -> list[str]:
    """What the collected ITEMS will need built, in the order the session needs it."""
    from vservers.engine.config import EngineConfig
    from vservers.engine.templates import busybox

    fixtures = set().union(*(getattr(item, "fixturenames", ()) for item in items)) if items else set()
    what = []
    cached = busybox.cache_dir(EngineConfig.from_env(TEST_ENV)) / f"busybox-{busybox.cache_key()}"
    if fixtures & BUSYBOX_USERS and not cached.is_file():
        what.append("busybox")
    if fixtures & DEBIAN_USERS:
        what.append("debian")
    return what


class Prebuild:
    """The background process of one session."""

    def __init__(self, what: list[str]) -> None:
        self.what = what
        STATUS.parent.mkdir(parents=True, exist_ok=True)
        STATUS.unlink(missing_ok=True)
        with open(LOG, "wb") as log:
            self.proc = subprocess.Popen(
                ["nice", "-n", NICENESS, sys.executable, "-m", "tests.prebuild", str(STATUS), *what],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parent.parent,  # the session's environment: its cache
            )

    def wait(self) -> dict:
        """Each build's result, once the process has ended."""
        self.proc.wait()
        try:
            return json.loads(STATUS.read_text())
        except (OSError, ValueError):
            return {}


def result(config, name: str) -> dict | None:
    """NAME's build by this session's background process (waited for), if it built NAME and
    that build succeeded; else None, and the caller builds it itself."""
    started: Prebuild | None = getattr(config, "_vservers_prebuild", None)
    if started is None or name not in started.what:
        return None
    done = started.wait().get(name)
    return done if done is not None and done["error"] is None else None


def _build_busybox() -> None:
    from vservers.engine.config import EngineConfig
    from vservers.engine.templates import busybox

    busybox.ensure_binary(EngineConfig.from_env(TEST_ENV))


def _build_debian() -> None:
    from tests import template_cache
    from vservers.engine import templates
    from vservers.engine.config import EngineConfig

    shutil.rmtree(BUILD_ROOT, ignore_errors=True)
    config = EngineConfig.from_env({**TEST_ENV, "VSERVER_ROOT": str(BUILD_ROOT)})
    try:
        template_cache.keep(config, templates.build(config, "debian"))
    finally:
        shutil.rmtree(BUILD_ROOT, ignore_errors=True)


def main(argv: list[str]) -> int:
    status_file, what = Path(argv[0]), argv[1:]
    builders = {"busybox": _build_busybox, "debian": _build_debian}
    status: dict[str, dict] = {}
    for name in what:
        started = time.monotonic()
        error = None
        try:
            builders[name]()
        except Exception as exc:  # noqa: BLE001 - reported to the fixture, which builds it itself
            traceback.print_exc()
            error = str(exc)
        status[name] = {"seconds": round(time.monotonic() - started, 1), "error": error, "finished": time.time()}
        print(f"{name}: {status[name]}", flush=True)
        status_file.write_text(json.dumps(status))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

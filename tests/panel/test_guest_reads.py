"""The worker reads a guest's accounts and services from its files (the host reads
/etc/passwd and runsv's supervise/ files through the guest's root) instead of running
programs inside it: the answers are the same as the guest's own tools give, and whatever the
guest's root makes of those paths, the host reads only the guest's own files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vservers import jobs
from vservers.engine.errors import EngineError
from vservers.models import GuestAccount, Service

pytestmark = pytest.mark.slow


def sh(world, server, script: str) -> str:
    result = world.engine.run(server.engine_name, ["/bin/sh", "-c", script])
    assert result.returncode == 0, result.stderr
    return result.stdout


def _same_services(from_files, from_sv) -> None:
    assert [(s.name, s.state, s.pid) for s in from_files] == [(s.name, s.state, s.pid) for s in from_sv]
    for mine, theirs in zip(from_files, from_sv, strict=True):
        assert (mine.seconds is None) == (theirs.seconds is None)
        if mine.seconds is not None:
            assert abs(mine.seconds - theirs.seconds) <= 2


def test_the_files_say_what_the_guests_tools_say(world, provision):
    server = provision("web")
    accounts = world.engine.accounts(server.engine_name)
    services = world.engine.services(server.engine_name)
    assert accounts.list_from_files() == accounts.list()
    _same_services(services.list_from_files(), services.list())
    assert any(s.name == "httpd" and s.state == "running" and s.pid for s in services.list_from_files())

    # Changes made inside the guest show: a new account, a stopped service, a service that
    # runit never supervised (no supervise/ yet), a service linked from elsewhere the runit
    # way, a dot directory (not a service for sh's `*`) and a plain file.
    sh(world, server, "adduser -D -s /bin/sh carol && sv -w 10 down /etc/service/httpd && "
                      "mkdir -p /etc/sv/linked /etc/service/.hidden /etc/unsupervised && "
                      "printf '#!/bin/sh\\nexec sleep 1000\\n' > /etc/sv/linked/run && chmod +x /etc/sv/linked/run && "
                      "ln -s /etc/sv/linked /etc/service/linked && touch /etc/service/plain-file")
    assert accounts.list_from_files() == accounts.list()
    assert "carol" in [a.name for a in accounts.list_from_files()]
    _same_services(services.list_from_files(), services.list())
    httpd = next(s for s in services.list_from_files() if s.name == "httpd")
    assert (httpd.state, httpd.pid) == ("stopped", None)
    names = [s.name for s in services.list_from_files()]
    assert "linked" in names and ".hidden" not in names and "plain-file" not in names


def test_the_worker_stores_what_the_files_say(world, provision):
    server = provision("web")
    GuestAccount.objects.filter(server=server).delete()
    Service.objects.filter(server=server).delete()
    jobs.store_accounts(server, world.engine)
    jobs.store_services(server, world.engine)
    assert GuestAccount.objects.filter(server=server, name="root", uid=0).exists()
    assert Service.objects.get(server=server, name="httpd").state == "running"


def test_the_host_never_reads_its_own_files_for_the_guest(world, provision, tmp_path):
    """A guest's symlinks that name host paths, climb out with "..", or lead into /proc
    (magic links, another filesystem) never make the host read a file of its own: the read
    fails (and the worker asks the guest's own tools instead)."""
    server = provision("web")
    marker = Path("/tmp") / f"vservers-host-only-{os.getpid()}"
    marker.write_text("hostonly:x:4242:4242::/:/bin/sh\n")
    try:
        accounts = world.engine.accounts(server.engine_name)
        real = accounts.list()
        for target in (str(marker), "../../../../../../../.." + str(marker), "/proc/1/root/etc/passwd",
                       "/proc/self/root/etc/passwd"):
            sh(world, server, f"cp -p /etc/passwd /etc/passwd.real 2>/dev/null || true; rm -f /etc/passwd; "
                              f"ln -s '{target}' /etc/passwd")
            with pytest.raises((OSError, EngineError)):
                accounts.list_from_files()
            try:
                stored = jobs.store_accounts(server, world.engine)  # the fallback: the guest's own cat
            except EngineError:
                stored = []  # which finds nothing there either
            assert "hostonly" not in [a.name for a in stored]
            sh(world, server, "rm -f /etc/passwd && cp -p /etc/passwd.real /etc/passwd")
        assert accounts.list_from_files() == real

        # /etc/passwd as a FIFO, a directory: refused without opening it (no hang).
        for make in ("mkfifo /etc/passwd", "mkdir /etc/passwd"):
            sh(world, server, f"rm -f /etc/passwd && {make}")
            with pytest.raises(EngineError):
                accounts.list_from_files()
            sh(world, server, "rm -rf /etc/passwd && cp -p /etc/passwd.real /etc/passwd")

        # A service directory that leads into /proc or to the host's paths.
        services = world.engine.services(server.engine_name)
        sh(world, server, "ln -s /proc/1 /etc/service/proc-link")
        with pytest.raises(OSError):
            services.list_from_files()  # another filesystem: left to sv
        sh(world, server, f"rm /etc/service/proc-link && ln -s '{tmp_path}' /etc/service/host-path && "
                          "mkdir -p /etc/service/fake/supervise && mkfifo /etc/service/fake/supervise/ok && "
                          "printf 'xxxxxxxxxxxxxxxxxxxx' > /etc/service/fake/supervise/status")
        found = {s.name: s for s in services.list_from_files()}
        assert "host-path" not in found  # a dangling link in the guest: not a directory
        assert found["fake"].state == "failed"  # its FIFO has no runsv reading it
    finally:
        marker.unlink()

"""A backup's download as production runs it: the web process (gunicorn + uvicorn as the
unprivileged vpanel, tests/consoles/web.py) cannot read the node's backup directory; it asks
the node's root broker (a real `manage.py consolebroker`) with a single-use ticket, gets the
open archive back (SCM_RIGHTS) and streams it.

 - the positive control: vpanel itself cannot open the archive (permission denied), so every
   byte that reaches the client came through the broker;
 - the bytes are the archive's (its SHA-256 as the engine recorded it, Content-Length, a safe
   file name), and the web worker's peak memory grows by far less than the archive's size;
 - a ticket opens the archive once; another user's ticket, another tenant's backup and a
   made-up ticket are refused with a plain sentence, and a tenant's token gets 404 for
   another tenant's backup.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
import urllib.error
import urllib.request

import pytest

from api import actions as tokens
from tests.panel_world import wait_for_http
from vservers.actions import request_operation
from vservers.backups import downloads
from vservers.models import Backup, OperationKind

pytestmark = pytest.mark.slow

# A page of random bytes (zstd cannot shrink it) large enough that holding the archive in
# memory would show in the web worker's peak.
BIG_MB = 48


def peak_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115 - one short read
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def web_workers(web) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
            except OSError:
                continue
            if int(fields[1]) == web.proc.pid:
                found.append(int(entry))
    return found


def post(url: str, token: str) -> urllib.request.Request:
    return urllib.request.Request(url, method="POST", headers={"Authorization": f"Bearer {token}"})


def test_a_backup_is_streamed_from_the_broker_to_the_unprivileged_web_process(
        fault_world, provision, drain, web_broker, web):
    world, engine = fault_world, fault_world.engine
    server = provision("web")
    wait_for_http(server.ip_list()[0])
    engine.run(server.engine_name, ["/bin/sh", "-c", f"head -c {BIG_MB}000000 /dev/urandom > /var/www/big.bin"])
    made = request_operation(server, OperationKind.BACKUP_CREATE, None)
    drain()
    made.refresh_from_db()
    assert made.status == "succeeded", made.error + made.detail
    backup = Backup.objects.get(server=server)
    assert backup.size_bytes > BIG_MB * 10**6

    # The control: the web process's user cannot read the archive itself.
    vpanel = pwd.getpwnam("vpanel")
    denied = subprocess.run(["setpriv", f"--reuid={vpanel.pw_uid}", f"--regid={vpanel.pw_gid}", "--init-groups",
                             "--", "head", "-c", "1", str(engine.backup_path(backup.name))],
                            capture_output=True, text=True, check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied

    [worker] = web_workers(web)
    before = peak_kib(worker)
    alice = tokens.create(world.alice, name="dl", scope="write", days=1)[1]
    digest, size = hashlib.sha256(), 0
    with urllib.request.urlopen(post(f"{web.url}/api/v1/backups/{backup.uuid}/download/", alice),  # noqa: S310
                                timeout=120) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) == backup.size_bytes
        assert response.headers["Content-Disposition"] == f'attachment; filename="{backup.name}"'
        while chunk := response.read(2**20):
            digest.update(chunk)
            size += len(chunk)
    assert (size, digest.hexdigest()) == (backup.size_bytes, backup.sha256)
    grew_mib = (peak_kib(worker) - before) / 1024
    print(f"download of {backup.size_bytes / 2**20:.1f} MiB: the web worker's peak grew by {grew_mib:.1f} MiB")
    assert grew_mib < BIG_MB / 3, f"the web worker's peak grew by {grew_mib:.1f} MiB for a {BIG_MB} MB archive"

    # Another tenant's token: 404, as for every other object.
    bob = tokens.create(world.bob, name="dl", scope="write", days=1)[1]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post(f"{web.url}/api/v1/backups/{backup.uuid}/download/", bob), timeout=30)  # noqa: S310
    assert refused.value.code == 404

    # The broker itself: a ticket once, and only for its own user and what that user may see.
    ticket = downloads.issue(backup, world.alice)
    fd, size = downloads.fetch(ticket, world.alice.pk, socket_path=web_broker.socket)
    os.close(fd)
    assert size == backup.size_bytes
    with pytest.raises(downloads.DownloadRefused, match="expired or was already used"):
        downloads.fetch(ticket, world.alice.pk, socket_path=web_broker.socket)
    theirs = downloads.issue(backup, world.alice)
    with pytest.raises(downloads.DownloadRefused, match="expired or was already used"):
        downloads.fetch(theirs, world.bob.pk, socket_path=web_broker.socket)
    not_allowed = downloads.issue(backup, world.bob)  # a ticket the web side would never issue
    with pytest.raises(downloads.DownloadRefused, match="You may not download this backup"):
        downloads.fetch(not_allowed, world.bob.pk, socket_path=web_broker.socket)
    with pytest.raises(downloads.DownloadRefused, match="expired or was already used"):
        downloads.fetch("made-up", world.alice.pk, socket_path=web_broker.socket)
    assert web_broker.children() == [] and web_broker.proc.poll() is None

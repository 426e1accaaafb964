"""The deployment files in deploy/: the systemd units pass `systemd-analyze verify` (which
also checks that every ExecStart program exists) with the checkout where docs/cluster.md puts
it (/opt/vservers, replaced here by this checkout), and without a warning; the sshd snippet
passes `sshd -t` in a configuration of its own. Where the tools are missing, the units are
parsed and their ExecStart paths checked instead."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
INSTALLED = "/opt/vservers"


def installed_here(tmp_path: Path, unit: Path, text: str | None = None) -> Path:
    """UNIT as it would be installed from this checkout; a template gets an instance."""
    name = unit.name.replace("@.", "@node-b.")
    path = tmp_path / name
    path.write_text((text if text is not None else unit.read_text()).replace(INSTALLED, str(REPO)))
    return path


def verify(paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})


def test_the_four_units_are_shipped():
    assert [unit.name for unit in UNITS] == ["vservers-broker.service", "vservers-cli.service",
                                             "vservers-panel.service", "vservers-worker@.service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_verifies_the_units(tmp_path):
    paths = [installed_here(tmp_path, unit) for unit in UNITS]
    result = verify(paths)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    # The control: a program that does not exist is caught.
    broken = tmp_path / "broken"
    broken.mkdir()
    unit = REPO / "deploy" / "systemd" / "vservers-panel.service"
    bad = installed_here(broken, unit, unit.read_text().replace(".venv/bin/gunicorn", ".venv/bin/no-such-program"))
    assert verify([bad]).returncode != 0


def test_the_units_run_what_they_say_from_the_checkout():
    """Parsed without systemd: each ExecStart names a program of the checkout (a manage.py
    command, gunicorn, vserver); the worker runs as root on its instance's queue and stops only
    itself."""
    for unit in UNITS:
        parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(unit.read_text())
        service = parser["Service"]
        program, *args = service["ExecStart"].split()
        assert program.startswith(INSTALLED + "/")
        assert (REPO / program.removeprefix(INSTALLED + "/")).exists(), program
        assert "EnvironmentFile" in service
        assert "multi-user.target" in parser["Install"]["WantedBy"]
    worker = (REPO / "deploy" / "systemd" / "vservers-worker@.service").read_text()
    assert "manage.py nodeworker %i" in worker and "KillMode=process" in worker
    panel = (REPO / "deploy" / "systemd" / "vservers-panel.service").read_text()
    assert "User=vpanel" in panel and "--bind 127.0.0.1:8000" in panel
    # The resident CLI server comes back after its exit on an upgrade (status 75), and a stop
    # ends only the server, not a command it runs.
    cli = (REPO / "deploy" / "systemd" / "vservers-cli.service").read_text()
    assert ".venv/bin/vserver serve" in cli and "Restart=always" in cli and "KillMode=process" in cli


@pytest.mark.skipif(shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists(),
                    reason="openssh-server is not installed")
def test_sshd_accepts_the_snippet(tmp_path):
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host_key")], check=True,
                   stdin=subprocess.DEVNULL)
    config = tmp_path / "sshd_config"
    snippet = (REPO / "deploy" / "sshd" / "vservers-migrate.conf").read_text()
    config.write_text(f"HostKey {tmp_path / 'host_key'}\nPidFile none\n{snippet}")
    # sshd checks for privilege separation's empty directory (as tests/engine/test_backups.py).
    made_run_dir = not os.path.isdir("/run/sshd")
    if made_run_dir:
        os.mkdir("/run/sshd", 0o755)
    try:
        result = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
        # What root gets with it: the worker's file, keys only.
        effective = subprocess.run([sshd, "-T", "-f", str(config), "-C", "user=root,host=node-a,addr=127.0.0.1"],
                                   capture_output=True, text=True)
    finally:
        if made_run_dir:
            os.rmdir("/run/sshd")
    assert result.returncode == 0, result.stderr
    assert effective.returncode == 0, effective.stderr
    lines = effective.stdout.lower().splitlines()
    assert "authorizedkeysfile .ssh/authorized_keys /var/lib/vservers/ssh/authorized_keys" in lines
    assert "permitrootlogin without-password" in lines or "permitrootlogin prohibit-password" in lines
    assert "passwordauthentication no" in lines

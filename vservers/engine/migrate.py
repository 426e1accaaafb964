"""Cold migration: a stopped server's disk image and config shipped to another node with rsync
over SSH, and adopted there.

Every node has a key pair of its own (ensure_node_key). A node's sshd lets the OTHER nodes'
keys run one thing only: Debian's `rrsync -wo` confined to `<root>/incoming/`
(authorized_keys_line), so a source can write files there and do nothing else on the target:
no shell, no reading, no path outside incoming/. Nodes trust the panel's database, not each
other: the target treats everything that arrives in incoming/ as untrusted input.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
from pathlib import Path

from . import validate
from .config import EngineConfig
from .errors import EngineError, InvalidInput
from .state import locked

KEY_DIR = "ssh"
KEY_NAME = "id_ed25519"
INCOMING = "incoming"
RRSYNC = "/usr/bin/rrsync"
# A path we put inside the forced command: sshd runs it through the user's shell, so it must
# hold nothing a shell would read as more than one plain word.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/-]*")
_PLAIN_COMMENT = re.compile(r"[A-Za-z0-9._@:+-]{1,100}")


def incoming_dir(config: EngineConfig) -> Path:
    return config.root / INCOMING


def ensure_incoming(config: EngineConfig) -> Path:
    """<root>/incoming/, root's only (mode 0700): what a source writes there (set-uid files,
    device nodes even) is out of every other local user's reach."""
    path = incoming_dir(config)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def ensure_node_key(config: EngineConfig) -> tuple[Path, str]:
    """This node's migration key pair, made once with ssh-keygen (ed25519) under
    <root>/ssh/id_ed25519: (private key path, public key line). Also makes incoming/, where
    the other nodes' keys may write."""
    key_dir = config.root / KEY_DIR
    private = key_dir / KEY_NAME
    public = key_dir / (KEY_NAME + ".pub")
    with locked(config.root / "locks" / ".node-key.lock"):
        key_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(key_dir, 0o700)
        ensure_incoming(config)
        if not (private.is_file() and public.is_file()):
            # Made under temporary names and renamed, public key last: a crash leaves either
            # no key (made again) or a whole pair, never a private key without its public half.
            tmp = key_dir / f".{KEY_NAME}.{os.getpid()}.tmp"
            for stale in (tmp, tmp.with_name(tmp.name + ".pub")):
                stale.unlink(missing_ok=True)
            comment = f"vservers-migrate@{_comment_host()}"
            try:
                result = subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(tmp)],
                    capture_output=True, text=True, stdin=subprocess.DEVNULL,
                )
            except FileNotFoundError:
                raise EngineError("ssh-keygen is not installed (Debian package openssh-client)") from None
            if result.returncode != 0:
                raise EngineError(f"ssh-keygen could not make this node's key: {result.stderr.strip()}")
            os.replace(tmp, private)
            os.replace(tmp.with_name(tmp.name + ".pub"), public)
        line = public.read_text().strip()
    return private, validate.ssh_public_key(line)


def _comment_host() -> str:
    name = socket.gethostname()
    return name if _PLAIN_COMMENT.fullmatch(name) else "node"


def authorized_keys_line(public_key: str, config: EngineConfig) -> str:
    """The line a node's authorized_keys gets for ANOTHER node's key: a forced command
    `/usr/bin/rrsync -wo <root>/incoming` with `restrict` (no pty, no forwarding), so the key
    can only write into incoming/ with rsync. Validates the key (type and base64), refuses
    anything else with InvalidInput.

    -no-lock: rrsync otherwise lets one run at a time per user, and two servers may arrive
    at once. -no-del: a source may add files, never delete what another put there."""
    key = validate.ssh_public_key(public_key)
    parts = key.split(None, 2)
    target = str(incoming_dir(config))
    if not _PLAIN_PATH.fullmatch(target) or ".." in target.split("/"):
        raise InvalidInput(f"VSERVER_ROOT {str(config.root)!r} cannot be named in a forced command")
    # The comment is kept only if it is plain (it names the node in the file); the key proper
    # is type and base64, which validate.ssh_public_key has checked.
    base64.b64decode(parts[1], validate=True)
    comment = parts[2] if len(parts) > 2 and _PLAIN_COMMENT.fullmatch(parts[2]) else ""
    line = f'restrict,command="{RRSYNC} -wo -no-lock -no-del {target}" {parts[0]} {parts[1]}'
    return f"{line} {comment}" if comment else line

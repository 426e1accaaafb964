"""Validators for everything an operator or tenant can type. Each returns the clean value or
raises InvalidInput with a one-line reason; nothing unvalidated reaches a program's arguments."""

from __future__ import annotations

import ipaddress
import re

from .errors import InvalidInput

_SERVER_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]|[a-z]")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,62}")
_TEMPLATE_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
# An interface name the kernel takes (at most IFNAMSIZ - 1 = 15 bytes, no "/", ":" or white
# space), narrowed to characters that are safe in any command, path and nft rule.
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?", re.IGNORECASE)
_SSH_KEY_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
}
# A SHA-512 crypt hash as chpasswd -e and /etc/shadow take it: "$6$", optional rounds, a salt
# of up to 16 characters and 86 characters of hash, all from crypt's alphabet (no ':' or newline).
_SHA512_CRYPT = re.compile(r"\$6\$(?:rounds=[0-9]{4,9}\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}")
RESERVED_USERS = {"root", "daemon", "bin", "sys", "sync", "nobody", "www-data", "sshd"}


def server_name(value: str) -> str:
    if not isinstance(value, str) or not _SERVER_NAME.fullmatch(value):
        raise InvalidInput(
            f"invalid server name {value!r}: use 1-32 lowercase letters, digits and '-', "
            "starting with a letter"
        )
    return value


# The snapshot a backup of a running server reads through is named with this prefix, and a
# backup deletes every snapshot so named as a leftover of a killed one: nobody else may take
# one (user_snapshot_name), and listings for users leave them out.
BACKUP_SNAPSHOT_PREFIX = "backup-"


def snapshot_name(value: str) -> str:
    """A snapshot's name: the rules of a server name (it becomes a directory name)."""
    if not isinstance(value, str) or not _SERVER_NAME.fullmatch(value):
        raise InvalidInput(
            f"invalid snapshot name {value!r}: use 1-32 lowercase letters, digits and '-', "
            "starting with a letter"
        )
    return value


def user_snapshot_name(value: str) -> str:
    """A snapshot name a user (the CLI, the panel) may give: not one a backup keeps for itself."""
    snapshot_name(value)
    if value.startswith(BACKUP_SNAPSHOT_PREFIX):
        raise InvalidInput(
            f"invalid snapshot name {value!r}: names starting with {BACKUP_SNAPSHOT_PREFIX!r} are "
            "kept for the snapshots backups take"
        )
    return value


def template_name(value: str) -> str:
    if not isinstance(value, str) or not _TEMPLATE_NAME.fullmatch(value):
        raise InvalidInput(f"invalid template name {value!r}")
    return value


def hostname(value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 253:
        raise InvalidInput(f"invalid hostname {value!r}")
    labels = value.rstrip(".").split(".")
    if not all(_HOST_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise InvalidInput(
            f"invalid hostname {value!r}: labels of lowercase letters, digits and '-', "
            "each 1-63 characters"
        )
    return value.rstrip(".")


def user_name(value: str, *, allow_reserved: bool = False) -> str:
    if not isinstance(value, str) or not _USER_NAME.fullmatch(value):
        raise InvalidInput(
            f"invalid user name {value!r}: 1-31 of a-z, 0-9, '_' and '-', starting with a letter"
        )
    if not allow_reserved and value in RESERVED_USERS:
        raise InvalidInput(f"user name {value!r} is reserved")
    return value


def password(value: str) -> str:
    if not isinstance(value, str) or not 8 <= len(value) <= 128:
        raise InvalidInput("password must be 8-128 characters")
    if any(ch in value for ch in "\n\r\x00:") or not value.isprintable():
        raise InvalidInput("password must not contain ':', newlines or control characters")
    return value


def password_hash(value: str) -> str:
    """A SHA-512 crypt hash ("$6$salt$hash") to store as an account's password."""
    if not isinstance(value, str) or not _SHA512_CRYPT.fullmatch(value):
        raise InvalidInput("password hash must be a SHA-512 crypt hash ($6$salt$hash)")
    return value


def service_name(value: str) -> str:
    if not isinstance(value, str) or not _SERVICE_NAME.fullmatch(value):
        raise InvalidInput(f"invalid service name {value!r}")
    return value


def ssh_public_key(value: str) -> str:
    """One OpenSSH public key line: type, base64 blob whose embedded type matches, comment."""
    if not isinstance(value, str) or len(value) > 16384:
        raise InvalidInput("SSH key too long")
    value = value.strip()
    if "\n" in value or "\r" in value or not value.isprintable():
        raise InvalidInput("SSH key must be a single line")
    parts = value.split(None, 2)
    if len(parts) < 2 or parts[0] not in _SSH_KEY_TYPES:
        raise InvalidInput("SSH key must start with a key type such as ssh-ed25519")
    import base64  # with struct and binascii: only SSH keys need it, not every CLI start

    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise InvalidInput("SSH key body is not valid base64") from None
    if len(blob) < 4:
        raise InvalidInput("SSH key body is too short")
    type_len = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + type_len].decode("ascii", "replace") != parts[0]:
        raise InvalidInput("SSH key body does not match its key type")
    return value


def size(value: str | int, *, minimum: int = 0, maximum: int = 2**50) -> int:
    """Parse '64M', '1.5G', '512KiB' or a byte count into bytes (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        match = _SIZE.fullmatch(str(value).strip())
        if not match:
            raise InvalidInput(f"invalid size {value!r}: use a number with K, M, G or T")
        unit = (match.group(2) or "B").upper()[0]
        factor = {"B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit]
        number = int(float(match.group(1)) * factor)
    if not minimum <= number <= maximum:
        raise InvalidInput(f"size {value!r} out of range ({minimum}..{maximum} bytes)")
    return number


def cpus(value: str | float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"invalid CPU share {value!r}") from None
    if not 0.01 <= number <= 1024:
        raise InvalidInput(f"CPU share {value!r} must be between 0.01 and 1024")
    return number


def pids(value: str | int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"invalid process limit {value!r}") from None
    if not 8 <= number <= 4_194_304:
        raise InvalidInput(f"process limit {value!r} must be between 8 and 4194304")
    return number


# Below these a guest can hardly boot, and nobody meant them: a typo ("5" for "5M") should be
# an error, not a server that takes minutes to start. Above them a ceiling limits nothing.
MIN_IO_BPS = 10**6
MAX_IO_BPS = 2**44
MIN_IO_IOPS = 10
MAX_IO_IOPS = 10**8


def io_weight(value: str | int) -> int:
    """A server's share of disk time against the others: 1-10000, 100 an even share."""
    if isinstance(value, bool):
        raise InvalidInput(f"invalid I/O weight {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"invalid I/O weight {value!r}: use a whole number 1-10000") from None
    if not 1 <= number <= 10_000:
        raise InvalidInput(f"I/O weight {value!r} must be between 1 and 10000 (100 is an even share)")
    return number


def io_bps(value: str | int) -> int:
    """Bytes per second: a byte count or a size such as '10M' (binary units, as for sizes)."""
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidInput(f"invalid I/O rate {value!r}: use bytes per second, e.g. 10M")
    try:
        number = size(value)
    except InvalidInput:
        raise InvalidInput(f"invalid I/O rate {value!r}: use bytes per second, e.g. 10M") from None
    if not MIN_IO_BPS <= number <= MAX_IO_BPS:
        raise InvalidInput(
            f"I/O rate {value!r} must be between {MIN_IO_BPS} bytes/s (1 MB/s) and {MAX_IO_BPS} bytes/s"
        )
    return number


def io_iops(value: str | int) -> int:
    """Operations per second."""
    if isinstance(value, bool):
        raise InvalidInput(f"invalid I/O operations limit {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"invalid I/O operations limit {value!r}: use a whole number per second") from None
    if not MIN_IO_IOPS <= number <= MAX_IO_IOPS:
        raise InvalidInput(f"I/O operations limit {value!r} must be between {MIN_IO_IOPS} and {MAX_IO_IOPS} per second")
    return number


def guest_address(value: str) -> str:
    """An address with prefix for a VPS, e.g. 198.18.0.10/16 or fd00::10/64."""
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise InvalidInput(f"invalid address {value!r}: use ADDRESS/PREFIX") from None
    if "/" not in str(value):
        raise InvalidInput(f"address {value!r} needs a prefix length, e.g. /16")
    addr = iface.ip
    if (
        addr.is_multicast
        or addr.is_loopback
        or addr.is_unspecified
        or addr.is_link_local
        or iface.network.prefixlen == iface.max_prefixlen
        or (addr.version == 4 and addr in (iface.network.network_address, iface.network.broadcast_address))
    ):
        raise InvalidInput(f"address {value!r} cannot be given to a server")
    return str(iface)


def gateway_interface(value: str, *, version: int):
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise InvalidInput(f"invalid gateway {value!r}: use ADDRESS/PREFIX") from None
    if iface.version != version or "/" not in value:
        raise InvalidInput(f"gateway {value!r} must be an IPv{version} address with prefix")
    return iface


def interface_name(value: object) -> str:
    """Return VALUE if the kernel would accept it as an interface name, else InvalidInput."""
    if not isinstance(value, str) or not _IFNAME.fullmatch(value) or value in (".", ".."):
        raise InvalidInput(f"bad interface name {value!r}: 1-15 characters of A-Z a-z 0-9 _ . -")
    return value


def bridge_name(value: object) -> str:
    """A bridge is an interface: the kernel refuses "." and ".." as its name (they would be
    directories under /sys/class/net), so the same rule applies."""
    try:
        return interface_name(value)
    except InvalidInput:
        raise InvalidInput(f"invalid bridge name {value!r}: 1-15 of A-Z a-z 0-9 _ . -, not . or ..") from None


def ssh_options(words: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Options for ssh (VSERVER_BACKUP_SSH_OPTIONS) as plain words: rsync splits its -e
    command on spaces itself, with no shell and no quoting."""
    for word in words:
        if not isinstance(word, str) or not re.fullmatch(r"[A-Za-z0-9_./=:@,+-]+", word):
            raise InvalidInput(f"ssh option {word!r} has characters that rsync's -e cannot carry")
    return tuple(words)

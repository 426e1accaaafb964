"""Accounts inside a VPS, managed with the guest's own tools (busybox adduser/deluser or
shadow's useradd/userdel, chpasswd). Values reach those tools as arguments or on stdin,
never inside a shell string."""

from __future__ import annotations

import builtins
import os
from dataclasses import asdict, dataclass

from . import validate
from .errors import Conflict, EngineError, NotFound

# Appends one key; the user name arrives as $1 and the key on stdin.
_ADD_KEY_SCRIPT = r"""
set -e
home=$(awk -F: -v u="$1" '$1 == u { print $6 }' /etc/passwd)
[ -n "$home" ] || { echo "no such user: $1" >&2; exit 3; }
umask 077
mkdir -p "$home/.ssh"
cat >> "$home/.ssh/authorized_keys"
chown -R "$1:$(id -g "$1")" "$home/.ssh"
"""


@dataclass(frozen=True)
class Account:
    """A user account inside a server, from its /etc/passwd."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @property
    def is_system(self) -> bool:
        return self.uid != 0 and (self.uid < 1000 or self.uid == 65534)

    def to_json(self) -> dict:
        return {**asdict(self), "system": self.is_system}


# The most digits of a uid or gid (Linux's are below 2**32).
_ID_DIGITS = 10


def parse_passwd(text: str) -> list[Account]:
    """The accounts of a passwd file, skipping lines that are not one. The guest's root writes
    the file: a uid like "²" passes str.isdigit() but not int(), and int() refuses over 4,300
    digits, so only ASCII numbers of up to _ID_DIGITS digits count."""
    accounts = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) != 7 or not all(_is_id(field) for field in fields[2:4]):
            continue
        accounts.append(Account(fields[0], int(fields[2]), int(fields[3]), fields[5], fields[6]))
    return accounts


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= _ID_DIGITS


class Accounts:
    def __init__(self, engine, name: str) -> None:
        self.engine = engine
        self.name = name

    def _tool(self) -> str:
        from . import templates

        spec = self.engine.spec(self.name)
        return templates.get(self.engine.config, spec.template, spec.template_version).account_tool

    def _run(self, argv: list[str], input: str | None = None, what: str = ""):
        from .guest import OPERATION_TIMEOUT

        result = self.engine.run(self.name, argv, input=input, timeout=OPERATION_TIMEOUT)
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise EngineError(f"{what or argv[0]} failed: {message[-1] if message else result.returncode}")
        return result

    def list(self) -> list[Account]:
        return parse_passwd(self._run(["cat", "/etc/passwd"]).stdout)

    def list_from_files(self) -> builtins.list[Account]:
        """What list() says, read by the host from the guest's /etc/passwd instead of by a
        program run inside the guest (well under a millisecond instead of an exec). The file
        is looked up as the guest sees it, but only on its root filesystem, and read only if
        it is a regular file (vservers.engine.guest.open_in_root). OSError or EngineError
        when that is not possible (e.g. /etc/passwd is a symlink out of the root filesystem,
        or openat2 is missing): list() still works then."""
        from . import guest

        root = guest.open_root(self.engine, self.name)
        try:
            data = guest.read_file(root, "/etc/passwd")
        finally:
            os.close(root)
        return parse_passwd(data.decode(errors="replace"))

    def get(self, user: str) -> Account | None:
        from . import guest

        # Every operation looks its user up: from the files where it can (no exec).
        return next((a for a in guest.listing(self) if a.name == user), None)

    def add(self, user: str, password: str | None = None, ssh_key: str | None = None) -> Account:
        validate.user_name(user)
        if password is not None:
            validate.password(password)
        if ssh_key is not None:
            validate.ssh_public_key(ssh_key)
        if self.get(user) is not None:
            raise Conflict(f"user {user!r} already exists in {self.name!r}")
        if self._tool() == "busybox":
            self._run(["adduser", "-D", "-s", "/bin/sh", user], what="adduser")
        else:
            self._run(["useradd", "--create-home", "--shell", "/bin/sh", user], what="useradd")
        if password is not None:
            self.set_password(user, password)
        if ssh_key is not None:
            self.add_ssh_key(user, ssh_key)
        account = self.get(user)
        if account is None:
            raise EngineError(f"user {user!r} was not created")
        return account

    def delete(self, user: str) -> None:
        validate.user_name(user)
        account = self.get(user)
        if account is None:
            return  # already gone: deleting is idempotent
        if self._tool() == "busybox":
            self._run(["deluser", user], what="deluser")
            if account.home.startswith("/home/") and ".." not in account.home:
                self._run(["rm", "-rf", "--", account.home], what="removing the home directory")
        else:
            self._run(["userdel", "--remove", user], what="userdel")

    def set_password(self, user: str, password: str) -> None:
        validate.user_name(user, allow_reserved=True)
        validate.password(password)
        self._require(user)
        argv = ["chpasswd", "-c", "sha512"] if self._tool() == "busybox" else ["chpasswd"]
        self._run(argv, input=f"{user}:{password}\n", what="chpasswd")

    def set_password_hash(self, user: str, hashed: str) -> None:
        """Set USER's password from its SHA-512 crypt hash (validate.password_hash), as the
        panel keeps a password given ahead of time: the plain text never reaches the node."""
        validate.user_name(user, allow_reserved=True)
        validate.password_hash(hashed)
        self._require(user)
        self._run(["chpasswd", "-e"], input=f"{user}:{hashed}\n", what="chpasswd")

    def add_ssh_key(self, user: str, key: str) -> None:
        validate.user_name(user, allow_reserved=True)
        key = validate.ssh_public_key(key)
        self._require(user)
        self._run(["/bin/sh", "-c", _ADD_KEY_SCRIPT, "sh", user], input=key + "\n", what="adding the key")

    def _require(self, user: str) -> None:
        if self.get(user) is None:
            raise NotFound(f"no user {user!r} in {self.name!r}")

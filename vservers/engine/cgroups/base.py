"""What every cgroup backend offers, and the parts v1 and v2 share: names, file I/O, kill, destroy."""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import time
from abc import ABC, abstractmethod
from pathlib import Path

from ..errors import Conflict, EngineError, InvalidInput
from ..spec import Limits, Usage

CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000  # the kernel refuses quotas below 1 ms
DEFAULT_SHARES = 1024
DEFAULT_WEIGHT = 100
# io_weight's scale is v2's io.weight (and cpu.weight): 1..10000, 100 an even share. BFQ's
# weight files, v1 and v2, take 1..1000 and get the value clamped into that range.
MIN_IO_WEIGHT = 1
MAX_IO_WEIGHT = 10_000
MAX_BFQ_WEIGHT = 1_000
# How long a freeze may take to stop every process of a group before it is given up (and the
# group thawed): a task stuck in uninterruptible sleep never reaches a point where it freezes.
FREEZE_TIMEOUT = 5.0
_DEVICE = re.compile(r"(\d{1,10}):(\d{1,10})")

# No dots, so a group can never be mistaken for an interface file such as "cpu.max".
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_@-]{0,127}")


def check_name(value: str, what: str = "cgroup name") -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidInput(f"invalid {what} {value!r}: use letters, digits, '_', '@' and '-' only")
    return value


def check_limits(limits: Limits) -> Limits:
    if limits.cpus is not None and not limits.cpus > 0:
        raise InvalidInput(f"cpus must be positive, not {limits.cpus!r}")
    if limits.memory_bytes is not None and limits.memory_bytes <= 0:
        raise InvalidInput(f"memory limit must be positive, not {limits.memory_bytes!r}")
    if limits.pids is not None and limits.pids <= 0:
        raise InvalidInput(f"pids limit must be positive, not {limits.pids!r}")
    if limits.io_weight is not None and not MIN_IO_WEIGHT <= limits.io_weight <= MAX_IO_WEIGHT:
        raise InvalidInput(f"I/O weight must be {MIN_IO_WEIGHT}..{MAX_IO_WEIGHT}, not {limits.io_weight!r}")
    for field in ("io_read_bps", "io_write_bps", "io_read_iops", "io_write_iops"):
        value = getattr(limits, field)
        # v1's files read 0 as "no limit": refused, so nobody asks for "no I/O" and gets that.
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise InvalidInput(f"{field} must be a positive whole number, not {value!r}")
    return limits


def check_device(device: str) -> str:
    """A block device's "MAJOR:MINOR", the form every blkio and io file takes."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise InvalidInput(f"invalid block device number {device!r}: use MAJOR:MINOR")
    return device


def block_device_number(path: str | Path) -> str:
    """The "MAJOR:MINOR" of the block device at PATH (say /dev/loop3)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise EngineError(f"cannot stat {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISBLK(info.st_mode):
        raise EngineError(f"{path} is not a block device")
    return f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"


def io_weight_value(weight: int | None, maximum: int = MAX_IO_WEIGHT) -> int:
    return min(maximum, max(MIN_IO_WEIGHT, DEFAULT_WEIGHT if weight is None else weight))


def cpu_quota_us(cpus: float) -> int:
    return max(MIN_CPU_QUOTA_US, round(cpus * CPU_PERIOD_US))


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_int(path: Path) -> int:
    text = read_text(path).strip()
    try:
        return int(text)
    except ValueError:
        raise EngineError(f"unexpected content in {path}: {text!r}") from None


def read_max(path: Path) -> int | None:
    """A value that the kernel writes as "max" when unlimited."""
    text = read_text(path).strip()
    return None if text == "max" else read_int(path)


def write_value(path: Path, value: str | int) -> None:
    # No O_CREAT: cgroupfs makes its interface files itself, so a missing file means a missing
    # controller or group, and creating a plain file in its place would hide that.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise EngineError(f"cgroup file {path} does not exist (controller not enabled?)") from exc
    except OSError as exc:
        raise EngineError(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        os.write(fd, str(value).encode())
    except OSError as exc:
        raise EngineError(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def read_pids(path: Path) -> set[int]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return {int(line) for line in text.split()}


def make_dir(path: Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except FileExistsError as exc:
        if not os.path.lexists(path):  # there, then gone: an unused parent removed meanwhile (create retries)
            raise EngineError(f"cannot create cgroup {path}: removed meanwhile") from FileNotFoundError(exc.errno, path)
        raise InvalidInput(f"{path} exists and is not a cgroup directory") from None
    except OSError as exc:
        raise EngineError(f"cannot create cgroup {path}: {exc.strerror or exc}") from exc


class CgroupBackend(ABC):
    """One cgroup per VPS, all under one parent group of this installation."""

    version: int

    def __init__(self, root: Path, parent: str) -> None:
        self.root = Path(root)
        self.parent = check_name(parent, "cgroup parent")

    # --- what each version does its own way -------------------------------------------------

    @abstractmethod
    def parent_paths(self) -> list[Path]:
        """The parent group's directories, one per distinct hierarchy."""

    @abstractmethod
    def _create_dirs(self, name: str) -> None: ...

    @abstractmethod
    def _apply(self, name: str, limits: Limits) -> None: ...

    @abstractmethod
    def _apply_io(self, name: str, device: str, limits: Limits) -> None:
        """Write LIMITS' I/O ceilings for block device DEVICE ("MAJOR:MINOR"), None clearing one."""

    @abstractmethod
    def _apply_host_io(self, device: str, limits: Limits) -> None:
        """Ceilings on DEVICE for I/O the kernel does on the server's behalf outside its group."""

    @abstractmethod
    def attach(self, name: str, pid: int) -> None: ...

    @abstractmethod
    def join_self(self, name: str) -> None:
        """Move the calling process, which must have a single thread, into group NAME."""

    @abstractmethod
    def usage(self, name: str) -> Usage: ...

    @abstractmethod
    def limits(self, name: str, device: str | None = None) -> Limits | None:
        """What the kernel holds for group NAME; the I/O ceilings are those on DEVICE
        ("MAJOR:MINOR"), or with none given on the one device the group has any for."""

    @abstractmethod
    def _request_freeze(self, name: str, frozen: bool) -> bool:
        """Ask the kernel to freeze (FROZEN true) or thaw group NAME; False when the group has
        no freezer (it does not exist, or was made before the engine put servers in one)."""

    @abstractmethod
    def frozen(self, name: str) -> bool:
        """Whether group NAME is frozen, or asked to be and not yet done."""

    @abstractmethod
    def _all_frozen(self, name: str) -> bool:
        """Whether every process of group NAME is frozen now."""

    # --- shared ------------------------------------------------------------------------------

    def freeze(self, name: str, timeout: float = FREEZE_TIMEOUT) -> None:
        """Stop every process of group NAME where it stands, until thaw(). Waits until the
        kernel says all are frozen; after TIMEOUT seconds thaws the group and fails."""
        check_name(name)
        if not self._request_freeze(name, True):
            raise Conflict(f"cgroup {self.parent}/{name} has no freezer: restart the server once to get one")
        deadline = time.monotonic() + timeout
        delay = 0.001
        while not self._all_frozen(name):
            if time.monotonic() >= deadline:
                self.thaw(name)
                raise EngineError(f"the processes of {name!r} did not all freeze within {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            # v1 retries the tasks that were not frozen yet only when asked again.
            self._request_freeze(name, True)

    def thaw(self, name: str) -> None:
        """Let group NAME's processes run again; nothing to do if it is not frozen or gone."""
        check_name(name)
        self._request_freeze(name, False)

    def paths(self, name: str) -> list[Path]:
        check_name(name)
        return [p / name for p in self.parent_paths()]

    def procs_files(self, name: str) -> list[Path]:
        """The cgroup.procs file of the group in every hierarchy: writing a pid to each
        moves that process in (the engine opens them before it enters a guest)."""
        return [path / "cgroup.procs" for path in self.paths(name)]

    def exists(self, name: str) -> bool:
        return any(p.is_dir() for p in self.paths(name))

    def names(self) -> list[str]:
        found: set[str] = set()
        for parent in self.parent_paths():
            try:
                found.update(entry.name for entry in parent.iterdir() if entry.is_dir())
            except FileNotFoundError:
                pass
        return sorted(found)

    def procs(self, name: str) -> list[int]:
        found: set[int] = set()
        for path in self.paths(name):
            found |= read_pids(path / "cgroup.procs")
        return sorted(found)

    def create(self, name: str, limits: Limits) -> None:
        check_name(name)
        check_limits(limits)
        # A concurrent destroy of another group may remove the empty parent under our feet.
        for attempt in range(3):
            try:
                self._create_dirs(name)
                break
            except EngineError as exc:
                if attempt == 2 or not isinstance(exc.__cause__, FileNotFoundError):
                    raise
        self._apply(name, limits)

    def update(self, name: str, limits: Limits, device: str | None = None) -> None:
        """Apply LIMITS to an existing group; the I/O ceilings too when DEVICE is given."""
        check_limits(limits)
        if device is not None:
            check_device(device)
        if not self.exists(name):
            raise EngineError(f"cgroup {self.parent}/{name} does not exist")
        self._apply(name, limits)
        if device is not None:
            self._apply_io(name, device, limits)
            self._apply_host_io(device, limits)

    def limit_io(self, name: str, device: str, limits: Limits) -> None:
        """Put LIMITS' I/O ceilings on block device DEVICE ("MAJOR:MINOR") for group NAME.

        Ceilings are per device in both versions, so they can only be written once the
        server's loop device is known; each start attaches a new one and makes a new group."""
        check_limits(limits)
        check_device(device)
        if not self.exists(name):
            raise EngineError(f"cgroup {self.parent}/{name} does not exist")
        self._apply_io(name, device, limits)
        self._apply_host_io(device, limits)

    def limit_io_in_group(self, name: str, device: str, limits: Limits) -> None:
        """LIMITS' I/O ceilings on DEVICE for group NAME alone: for a device all servers share
        (the btrfs pool's, qgroups.py), where limit_io's ceiling outside the group would hold
        for every server."""
        check_limits(limits)
        check_device(device)
        if not self.exists(name):
            raise EngineError(f"cgroup {self.parent}/{name} does not exist")
        self._apply_io(name, device, limits)

    def release_io(self, device: str) -> None:
        """Lift what limit_io put outside the server's group on DEVICE, once the server is done
        with it (the device goes back to the host's pool of loop devices)."""
        self._apply_host_io(check_device(device), Limits())

    def kill(self, name: str) -> None:
        """SIGKILL every process; repeat while processes forked before the signal keep appearing."""
        signalled: set[int] = set()
        for _ in range(100):
            fresh = set(self.procs(name)) - signalled
            if not fresh:
                return
            for pid in fresh:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            signalled |= fresh

    def destroy(self, name: str, timeout: float = 5.0, keep_parent: bool = False) -> None:
        """Kill what group NAME holds and remove it; then the installation's parent group too if
        no other group is left, unless KEEP_PARENT (a start about to make its group there, which
        with other starts in other threads would remove the parent under their feet)."""
        check_name(name)
        deadline = time.monotonic() + timeout
        if self.exists(name):
            # A frozen v1 task does not even die of SIGKILL until it is thawed.
            self.thaw(name)
            self._empty(name, deadline)
            for path in self.paths(name):
                self._remove(path, deadline, f"cgroup {self.parent}/{name}")
        if not keep_parent:
            self._remove_parent_if_unused()

    def _empty(self, name: str, deadline: float) -> None:
        delay = 0.005
        while True:
            self.kill(name)
            left = self.procs(name)
            if not left:
                return
            if time.monotonic() >= deadline:
                raise EngineError(f"cgroup {self.parent}/{name} still has processes {left} after SIGKILL")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _remove(self, path: Path, deadline: float, label: str) -> None:
        delay = 0.005
        while True:
            try:
                self._rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                # Right after its last process exits, a group can still be busy for a moment.
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise EngineError(f"cannot remove {label} ({path}): {exc.strerror}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _has_groups(self) -> bool:
        """Whether any hierarchy's parent still holds a group: stops at the first one, where
        names() would list every server's (this runs on every start and delete)."""
        for parent in self.parent_paths():
            try:
                with os.scandir(parent) as entries:
                    if any(entry.is_dir(follow_symlinks=False) for entry in entries):
                        return True
            except FileNotFoundError:
                pass
        return False

    def _remove_parent_if_unused(self) -> None:
        if self._has_groups():
            return
        for parent in self.parent_paths():
            try:
                self._rmdir(parent)
            except FileNotFoundError:
                pass
            except OSError as exc:
                # Another operation may have just created a group in it; that one keeps it.
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise EngineError(f"cannot remove cgroup parent {parent}: {exc.strerror}") from exc

    def _rmdir(self, path: Path) -> None:
        """Remove one group directory (cgroupfs allows rmdir with its interface files inside)."""
        os.rmdir(path)

"""The engine's public API: create, start, stop, restart, delete, status and list VPSs.

State on disk only remembers what was asked for (config.json) and what the last start made
(runtime.json); whether a server runs is always asked of the kernel. Every operation takes
the server's lock, re-reads the state and converges, so re-running it after a crash at any
line finishes or undoes the half-done work.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import ipaddress
import os
import shutil
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

from . import templates, validate
from .config import EngineConfig
from .errors import Conflict, EngineError, InvalidInput, NotFound
from .procfs import boot_id, catches, reap, start_time, still_running, wait_exit
from .spec import Limits, RuntimeState, ServerSpec, Status, Usage
from .state import locked, read_json, write_json

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms at every CLI start)

if TYPE_CHECKING:
    import socket

    from .backups import BackupInfo, Progress
    from .forker import ForkServer
    from .launch import Launched
    from .migrate import MigrationTarget, ShipResult
    from .snapshots import SnapshotInfo

# A namespace's init gets from outside only the signals it catches or blocks; others are
# dropped. A halt signal sent in the first moment after init's exec, before the guest's init
# has set that up, is lost: unless /proc showed init catching or blocking it when it was sent
# (procfs.catches), it is sent again while init is still there after each of these waits
# (seconds), then left to the stop's timeout. A stop right after a start met a lost signal in
# about one cycle of ten in bench/engine.py's throughput once starts got quicker, and waited out
# the 0.3 s there was then before the one resend (2026-12-07). /proc cannot always tell:
# busybox init waits for its signals in sigtimedwait(2), which unblocks them while it waits
# (SigBlk shows none) and catches none (SigCgt); it takes a repeated halt signal as the same
# request. sysvinit (the debian template) catches SIGINT, so its stop is asked once: a second
# SIGINT once it is in runlevel 0 runs the halt script again, which cut the orderly shutdown
# short (measured: a resend at 0.1 s ended the guest at 0.2 s, at 0.3 s at 0.4 s, against 0.55 s
# without; resends at 5 and 25 ms changed nothing).
HALT_RESENDS = (0.005, 0.02, 0.3)
STOP_TIMEOUT = 10.0
# start_many's threads: a start spends most of its time waiting for the kernel and its own
# children, so a few at once keep two CPUs busy without piling up runnable work.
START_PARALLEL = 4
# Where a fork server started for one start_many pays for itself: it takes ~80 ms to start,
# and 20 servers' starts came out ~5 ms a server faster with it, its start included (2026-12-07).
BATCH_FORK_SERVER = 8
# How long a start or delete leaves the kernel to delete a stopped server's veth with its
# network namespace before deleting it itself (network.detach). The kernel took up to 16 ms
# here; the fallback is for a namespace something else holds open.
VETH_GRACE = 0.25
# Present while a server's disk image may be larger than the filesystem in it: an update that
# grows the disk writes it before the image grows and removes it once resize2fs has run, so a
# crash in between is finished by the next update or start.
DISK_GROW_PENDING = "disk-grow.json"
# Present while a snapshot operation (snapshots.py) may have left the server frozen or half
# restored.
SNAPSHOT_BUSY = "snapshot-busy.json"


class Engine:
    def __init__(self, config: EngineConfig | None = None, *, fork_server: bool = False) -> None:
        """FORK_SERVER: fork each start's helpers from a small process of their own (forker.py),
        for a process much bigger than the engine, such as the panel's worker."""
        self.config = config or EngineConfig.from_env()
        self._cgroups = None
        self._forker = None
        if fork_server:
            from .forker import ForkServer

            self._forker = ForkServer()

    def start_fork_server(self) -> None:
        """Start this engine's fork server ahead of the first start (it takes ~80 ms to be
        ready), if it has one."""
        if self._forker is not None:
            self._forker.start()

    def close(self) -> None:
        """End the fork server, if this engine has one (it also ends with the process)."""
        if self._forker is not None:
            self._forker.close()

    # -- paths and state -------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        return self.config.server_dir(validate.server_name(name))

    def _lock(self, name: str, wait: bool = True):
        return locked(self.config.root / "locks" / f"{validate.server_name(name)}.lock", wait)

    def _alloc_lock(self):
        return locked(self.config.root / "locks" / ".allocate.lock")

    def spec(self, name: str) -> ServerSpec:
        data = read_json(self._dir(name) / "config.json")
        if data is None:
            raise NotFound(f"no server named {name!r}")
        return ServerSpec.from_json(data)

    def _runtime(self, name: str) -> RuntimeState | None:
        data = read_json(self._dir(name) / "runtime.json")
        return RuntimeState.from_json(data) if data else None

    def names(self) -> list[str]:
        if not self.config.servers_dir.is_dir():
            return []
        return sorted(p.name for p in self.config.servers_dir.iterdir() if (p / "config.json").is_file())

    def specs(self) -> list[ServerSpec]:
        """Every server's spec; one deleted meanwhile (by another process) is left out. Each
        create reads them all (addresses and uid ranges in use), so this reads config.json
        of each directory entry straight away, without a stat per server first."""
        found = []
        try:
            entries = sorted(os.listdir(self.config.servers_dir))
        except FileNotFoundError:
            return []
        for name in entries:
            try:
                data = read_json(self.config.servers_dir / name / "config.json")
            except NotADirectoryError:
                continue
            if data is not None:  # else half created or being deleted
                found.append(ServerSpec.from_json(data))
        return found

    @property
    def cgroups(self):
        if self._cgroups is None:
            from .cgroups import detect

            self._cgroups = detect(self.config)
        return self._cgroups

    def host_veth(self, name: str) -> str:
        from .digest import sha256

        digest = sha256(validate.server_name(name).encode()).hexdigest()
        return (self.config.veth_prefix + digest)[:15]

    def _running_init(self, name: str) -> int | None:
        """The pid of the server's init if it is alive (the kernel's word), else None."""
        runtime = self._runtime(name)
        return runtime.init_pid if runtime is not None and _alive(runtime) else None

    # -- create / delete -------------------------------------------------------------------

    def create(
        self,
        name: str,
        template: str,
        addresses: list[str],
        limits: Limits | None = None,
        hostname: str | None = None,
        autostart: bool = False,
        template_version: str | None = None,
    ) -> ServerSpec:
        """Create a stopped server: its config and its own disk image (a sparse ext4 file),
        from the template's current version or TEMPLATE_VERSION (a restored backup's files
        belong over the version they were taken on).

        1. validate everything before touching the disk;
        2. under the installation's allocation lock: check the addresses are free and pick a
           free uid range;
        3. make the image, then write config.json last: a directory without it is a
           half-created server that create or delete may clean up.
        """
        from . import userns  # it loads ctypes and syscalls: list and status need neither

        validate.server_name(name)
        limits = limits or Limits()
        hostname = validate.hostname(hostname or name)
        interfaces = self._check_addresses(addresses)
        info = templates.get(self.config, template, template_version)
        with self._lock(name), self._alloc_lock():
            existing = read_json(self._dir(name) / "config.json")
            if existing is not None:
                spec = ServerSpec.from_json(existing)
                if (spec.template, spec.addresses, spec.limits, spec.hostname) == (
                    info.name, tuple(interfaces), limits, hostname
                ):
                    return spec  # the same create again: already done
                raise Conflict(f"server {name!r} already exists")
            others = self.specs()
            self._check_addresses_free(interfaces, others)
            # Under the allocation lock nobody creates; a delete meanwhile only frees a range.
            taken = [other.uid_base for other in others]
            spec = ServerSpec(
                name=name,
                template=info.name,
                template_version=info.version,
                hostname=hostname,
                addresses=tuple(interfaces),
                limits=limits,
                uid_base=userns.allocate_base(self.config.uid_base, taken),
                autostart=autostart,
            )
            server_dir = self._dir(name)
            shutil.rmtree(server_dir, ignore_errors=True)  # leftovers of a crashed create
            for sub in ("disk", "lower", "rootfs"):
                (server_dir / sub).mkdir(parents=True, exist_ok=True)
            # Search-only for others: the guest's init-to-be, already an unprivileged uid on the
            # host, must reach its rootfs mount point before it pivots into it.
            for path in (self.config.root, self.config.servers_dir, server_dir):
                os.chmod(path, 0o711)
            try:
                if self.config.storage == "btrfs":
                    from . import qgroups

                    qgroups.make_server(self.config, server_dir, name, limits.disk_bytes, spec.uid_base)
                else:
                    make_disk_image(server_dir / "disk.img", limits.disk_bytes, spec.uid_base)
                write_json(server_dir / "config.json", spec.to_json())
            except BaseException:
                self._remove_storage(name)
                shutil.rmtree(server_dir, ignore_errors=True)
                raise
        return spec

    def _check_addresses(self, addresses: list[str]) -> list[str]:
        if not addresses:
            raise InvalidInput("a server needs at least one --ip address")
        clean = []
        for text in addresses:
            iface = ipaddress.ip_interface(validate.guest_address(text))
            gateway = self.config.gateway4 if iface.version == 4 else self.config.gateway6
            if gateway is not None:
                if iface.network != gateway.network:
                    raise InvalidInput(f"address {text} is not in the bridge network {gateway.network}")
                if iface.ip == gateway.ip:
                    raise InvalidInput(f"address {text} is the bridge's own gateway address")
            clean.append(str(iface))
        if len({ipaddress.ip_interface(a).ip for a in clean}) != len(clean):
            raise InvalidInput("the same address was given twice")
        return clean

    def _check_addresses_free(self, interfaces: list[str], others: list[ServerSpec]) -> None:
        wanted = {ipaddress.ip_interface(a).ip for a in interfaces}
        for other in others:
            used = {ipaddress.ip_interface(a).ip for a in other.addresses}
            clash = wanted & used
            if clash:
                raise Conflict(f"address {sorted(map(str, clash))[0]} is already used by {other.name!r}")

    def delete_many(self, names: list[str]) -> dict[str, EngineError | None]:
        """Delete several servers; their shutdowns run at the same time."""
        results = self.stop_many([n for n in names if n in self.names()])
        for name in names:
            if results.get(name) is None:
                try:
                    self.delete(name)
                    results[name] = None
                except EngineError as exc:
                    results[name] = exc
        return results

    def delete(self, name: str) -> None:
        """Stop the server if needed and remove everything of it. Deleting a missing or
        half-created server succeeds."""
        server_dir = self._dir(name)
        with self._lock(name):
            self._stop_locked(name, timeout=STOP_TIMEOUT)
            created = read_json(server_dir / "config.json")
            if created is not None:  # its firewall entries stay while it is stopped: drop them now
                from . import firewall

                firewall.release(self.config.bridge, self.host_veth(name), created["addresses"])
            self._remove_storage(name)
            shutil.rmtree(server_dir, ignore_errors=True)
            # An unfinished receive's plan (migrate.py) would otherwise outlive its server.
            (self.config.root / "receiving" / f"{name}.json").unlink(missing_ok=True)
            if server_dir.exists():
                raise EngineError(f"could not remove {server_dir}")

    def _remove_storage(self, name: str) -> None:
        """Delete the server's btrfs subvolume, if it has (or a crashed create left) one."""
        if self.config.storage == "btrfs" or (self._dir(name) / "storage.json").exists():
            from . import qgroups

            qgroups.remove_server(self.config, self._dir(name), name)

    def _btrfs_storage(self, name: str):
        """The server's qgroups.ServerStorage, or None for a loop-backed server (one stat)."""
        if not (self._dir(name) / "storage.json").exists():
            return None
        from . import qgroups

        return qgroups.of_server(self._dir(name))

    def _refuse_on_btrfs(self, name: str, what: str) -> None:
        if self._btrfs_storage(name) is not None:
            from . import qgroups

            raise qgroups.refuse(what, name)

    def _disk_used(self, name: str, init_pid: int) -> int | None:
        storage = self._btrfs_storage(name)
        if storage is None:
            return disk_used(init_pid)
        from . import qgroups

        return qgroups.used_bytes(storage.subvolume)

    # -- start / stop ----------------------------------------------------------------------

    def start(self, name: str) -> Status:
        return self._start(name, self._forker)

    def _start(self, name: str, forker: ForkServer | None) -> Status:
        with self._lock(name):
            spec = self.spec(name)
            if self._recover_snapshot(name):  # a restore finished now may change the template
                spec = self.spec(name)
            if self._running_init(name) is None:
                self._clean_leftovers(name, starting=True)
                self._start_locked(spec, forker=forker)
                # Its addresses are the ones just configured; no need to ask its namespace.
                # Nor its usage (a moment old, so nearly nothing): the cgroup counters, statvfs
                # and a netlink dump would cost about 1.5 ms of the engine's CPU per start.
                return self.status(name, with_addresses=False, with_usage=False)
        return self.status(name)

    def start_many(self, names: list[str], parallel: int = START_PARALLEL) -> dict[str, EngineError | None]:
        """Start several servers, PARALLEL at a time (threads, each one server's `start`): a
        start mostly waits for the kernel (mounts, namespaces, netlink) and for its children,
        so the waits of several overlap. Returns each server's error or None.

        From BATCH_FORK_SERVER servers on, their helpers are forked by a fork server (this
        engine's, or one started for the batch, ~80 ms): forked by the threads themselves, each
        start's user namespace waits for the one before (userns.Creation's lock) and each fork
        copies this process. 20 servers took 39.9 ms each to answer HTTP that way, 34.5 ms with
        a fork server started for the batch, 26.7 ms with one already running (2026-12-07)."""
        wanted = sorted(set(names))
        for name in wanted:
            validate.server_name(name)
        if self._forker is None and len(wanted) >= BATCH_FORK_SERVER:
            from .forker import ForkServer

            batch = ForkServer()
            try:
                return self._start_many(wanted, parallel, batch)
            finally:
                batch.close()
        return self._start_many(wanted, parallel, self._forker)

    def _start_many(self, wanted: list[str], parallel: int, forker: ForkServer | None) -> dict[str, EngineError | None]:
        import threading

        results: dict[str, EngineError | None] = {}
        self.cgroups  # noqa: B018 - detected once here, not raced for by the threads
        pending = list(reversed(wanted))
        taken = threading.Lock()
        unexpected: list[BaseException] = []  # raised here, as start would, after all have ended

        def work() -> None:
            while True:
                with taken:
                    if not pending:
                        return
                    name = pending.pop()
                try:
                    self._start(name, forker)
                    results[name] = None
                except EngineError as exc:
                    results[name] = exc
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    unexpected.append(exc)
                    return

        threads = [threading.Thread(target=work, name=f"start-{i}") for i in range(max(1, min(parallel, len(wanted))))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if unexpected:
            raise unexpected[0]
        return {name: results.get(name) for name in wanted}

    def _start_locked(self, spec: ServerSpec, rescue: bool = False, forker: ForkServer | None = None) -> None:
        """Start SPEC's server; with RESCUE from the rescue system, its own files at /mnt. Its
        helpers are forked by FORKER, or this engine's fork server, or this process."""
        from . import network
        from .launch import LaunchPlan, launch  # namespaces, seccomp, ctypes: only starts need them

        server_dir = self._dir(spec.name)
        storage = self._btrfs_storage(spec.name)
        layers = None
        if rescue:
            from .rescue import RESCUE_TEMPLATE, RescueLayers

            info = templates.get(self.config, RESCUE_TEMPLATE)
            layers = RescueLayers.under(server_dir, templates.rootfs_path(self.config, info.name, info.version))
            layers.make_mount_points()
        else:
            info = templates.get(self.config, spec.template, spec.template_version)
        if (server_dir / DISK_GROW_PENDING).exists():  # an update that grew the disk crashed
            self._grow_disk(spec.name, spec.limits.disk_bytes, running=False)
        self.cgroups.create(spec.name, spec.limits)
        host_if = self.host_veth(spec.name)
        interfaces = spec.interfaces()
        network.ensure_bridge(self.config.bridge, self.config.gateway4, self.config.gateway6)
        from . import firewall

        mac = firewall.protect(self.config, host_if, interfaces)  # before its port exists: no gap

        def wire(init_pid: int, netns_fd: int, route: socket.socket) -> None:
            network.attach(
                self.config.bridge,
                host_if,
                init_pid,
                interfaces,
                self.config.gateway4.ip if any(i.version == 4 for i in interfaces) else None,
                self.config.gateway6.ip if self.config.gateway6 and any(i.version == 6 for i in interfaces)
                else None,
                mac=mac,
                netns=network.GuestNetns(netns_fd, route),
            )

        def record(launched: Launched) -> None:
            runtime = RuntimeState(
                init_pid=launched.init_pid,
                init_start_time=start_time(launched.init_pid) or 0,
                loop_device=launched.loop_device,
                host_veth=host_if,
                boot_id=boot_id(),
                rescue_version=info.version if rescue else "",
            )
            # Not fsync'ed: after a host crash no init of it runs, whatever the file says.
            write_json(server_dir / "runtime.json", runtime.to_json(), durable=False)
            # Before the guest's init runs: I/O ceilings are per device, and the device is new.
            if launched.loop_device:
                from .cgroups import block_device_number

                self.cgroups.limit_io(spec.name, block_device_number(launched.loop_device), spec.limits)
            elif storage is not None:
                from . import qgroups

                qgroups.limit_io(self.cgroups, spec.name, storage, spec.limits)

        plan = LaunchPlan(
            hostname=spec.hostname,
            uid_base=spec.uid_base,
            template_rootfs=templates.rootfs_path(self.config, spec.template, spec.template_version),
            image=server_dir / "disk.img",
            disk_dir=server_dir / "disk",
            lower_dir=server_dir / "lower",
            rootfs_dir=server_dir / "rootfs",
            init_argv=info.init,
            join_cgroups=functools.partial(self.cgroups.join_self, spec.name),
            network_admin=spec.limits.network_admin,
            rescue=layers,
            direct_io=self.config.loop_direct_io,
            upper_work=(storage.upper, storage.work) if storage is not None else None,
            netns_sysctls=tuple(network.ANNOUNCE_BY_DEFAULT.items()),
        )
        try:
            launched = launch(plan, wire, record, forker or self._forker)
        except BaseException:
            self._clean_leftovers(spec.name)
            raise
        if launched.buffered_reason:
            import logging

            logging.getLogger(__name__).warning(
                "%s: disk attached buffered, not with direct I/O: %s", spec.name, launched.buffered_reason)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> Status:
        """Ask the guest's init to shut down; kill what remains after TIMEOUT seconds. Once it
        returns the server's processes, mounts, cgroups and loop device are gone; its host veth
        may outlive it by a moment (_clean_leftovers' VETH)."""
        with self._lock(name):
            self.spec(name)
            self._stop_locked(name, timeout, veth=False)
        return self.status(name)

    def stop_many(self, names: list[str], timeout: float = STOP_TIMEOUT) -> dict[str, EngineError | None]:
        """Stop several servers at once: every init is asked first, then all are awaited, so
        N stops take about as long as the slowest one. Returns each server's error or None."""
        results: dict[str, EngineError | None] = {}
        with ExitStack() as stack:
            asked: dict[str, tuple[int, bool]] = {}
            for name in sorted(set(names)):
                try:
                    stack.enter_context(self._lock(name))
                    self.spec(name)
                    self._recover_snapshot(name)  # as _stop_locked: a frozen init ignores SIGKILL (v1)
                    init_pid = self._running_init(name)
                    if init_pid is not None:
                        asked[name] = (init_pid, self._ask_to_halt(name, init_pid, timeout))
                    results[name] = None
                except EngineError as exc:
                    results[name] = exc
            deadline = time.monotonic() + timeout
            for name in [n for n in sorted(results) if results[n] is None]:
                try:
                    if name in asked:
                        init_pid, surely = asked[name]
                        self._await_halt(name, init_pid, max(0.0, deadline - time.monotonic()), resend=not surely)
                    self._clean_leftovers(name, veth=False)
                except EngineError as exc:
                    results[name] = exc
        return results

    def restart(self, name: str, timeout: float = STOP_TIMEOUT) -> Status:
        with self._lock(name):
            spec = self.spec(name)
            self._stop_locked(name, timeout)
            self._start_locked(spec)
        return self.status(name)

    def _stop_locked(self, name: str, timeout: float, *, veth: bool = True) -> None:
        self._recover_snapshot(name)  # a frozen server would not even die of SIGKILL (v1)
        init_pid = self._running_init(name)
        if init_pid is not None:
            surely = self._ask_to_halt(name, init_pid, timeout)
            self._await_halt(name, init_pid, timeout, resend=not surely)
        self._clean_leftovers(name, veth=veth)

    def _halt_signal(self, name: str) -> int:
        """What asks the running init to shut down: its template's (the rescue system's in
        rescue mode)."""
        runtime = self._runtime(name)
        if runtime is not None and runtime.rescue_version:
            from .rescue import RESCUE_TEMPLATE

            return templates.get(self.config, RESCUE_TEMPLATE, runtime.rescue_version).halt_signal
        spec = self.spec(name)
        return templates.get(self.config, spec.template, spec.template_version).halt_signal

    def _ask_to_halt(self, name: str, init_pid: int, timeout: float) -> bool:
        """Remember the disk's usage and signal init to shut down; with no TIMEOUT to shut down
        in (stop --kill), only the former: _await_halt kills at once, and a shutdown begun now
        would only fork the guest's rcK (sv, pidof) into the kill. Returns whether the signal
        surely reached init (see HALT_RESENDS)."""
        self._remember_disk_usage(name, init_pid)
        if timeout <= 0:
            return False
        halt = self._halt_signal(name)
        surely = catches(init_pid, halt)
        try:
            os.kill(init_pid, halt)
        except ProcessLookupError:
            pass
        return surely

    def _await_halt(self, name: str, init_pid: int, timeout: float, *, resend: bool = True) -> None:
        """Wait for init to finish its shutdown, with RESEND asking again after each of
        HALT_RESENDS; after TIMEOUT kill everything left."""
        deadline = time.monotonic() + timeout
        for wait in (*(HALT_RESENDS if resend else ()), timeout):
            if wait_exit(init_pid, max(0.0, min(wait, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                break
            try:
                os.kill(init_pid, self._halt_signal(name))
            except ProcessLookupError:
                return
        self.cgroups.kill(name)
        try:
            os.kill(init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # Dying includes unmounting the server's filesystems; give a loaded host time for it.
        if not wait_exit(init_pid, 30.0):
            raise EngineError(f"init of {name!r} (pid {init_pid}) survived SIGKILL")

    def _clean_leftovers(self, name: str, *, veth: bool = True, starting: bool = False) -> None:
        """Remove what a stopped (or crashed, or half-started) server may still hold. Without
        VETH (a stop) the host's end of its veth is left to the kernel: the pair's other end,
        eth0, was made inside the guest's network namespace and never left it, and the kernel
        deletes the pair when it tears that namespace down, in a work queue after the last
        process has gone. Deleting it here waited for that teardown, which holds the rtnl lock
        (~20 ms, and ~15 ms of importing network), on about a quarter of the stops of a quiet
        host. Start, restart and delete still wait until one that is there is gone, as the
        kernel's teardown is quicker than our delete (network.detach): a start must not meet
        it, and a delete leaves nothing behind. STARTING: a start's, which keeps the parent
        cgroup it is about to use (cgroups.destroy)."""
        from .loopdev import wait_released

        runtime = self._runtime(name)
        server_dir = self._dir(name)
        if runtime is not None:
            reap(runtime.init_pid)
        self.cgroups.destroy(name, keep_parent=starting)
        host_if = runtime.host_veth if runtime else self.host_veth(name)
        if veth and os.path.lexists(f"/sys/class/net/{validate.interface_name(host_if)}"):
            # Usually gone with the namespace: a stop then skips importing network (~15 ms).
            from . import network

            network.detach(host_if, grace=VETH_GRACE)
        if runtime is not None and runtime.loop_device:
            self._release_io(runtime.loop_device, server_dir / "disk.img")
            if not wait_released(runtime.loop_device, server_dir / "disk.img"):
                raise EngineError(f"{runtime.loop_device} of {name!r} is still attached")
        (server_dir / "runtime.json").unlink(missing_ok=True)

    # -- snapshots (vservers/engine/snapshots.py) ------------------------------------------

    def recover(self, name: str) -> bool:
        """Thaw what a killed snapshot left frozen, or finish a killed restore, while nothing
        else works on NAME; returns whether there was anything. For the node's periodic
        reconcile: a frozen server runs nothing, yet looks running, until an operation comes.
        A snapshot in progress (the server's lock held) is left to finish."""
        if not (self._dir(name) / SNAPSHOT_BUSY).exists():
            return False
        with ExitStack() as stack:
            try:
                stack.enter_context(self._lock(name, wait=False))
            except BlockingIOError:
                return False
            return self._recover_snapshot(name)

    def _recover_snapshot(self, name: str) -> bool:
        """Thaw what a killed snapshot left frozen, or finish a killed restore (one stat when
        there is nothing to do)."""
        # snapshots imports subprocess, typing and ctypes (~8 ms of a `vserver start`): only a
        # server that a snapshot operation left its marker in needs it.
        if not (self._dir(name) / SNAPSHOT_BUSY).exists():
            return False
        from . import snapshots

        return snapshots.recover(self, name)

    def snapshot_create(self, name: str, snap: str | None = None) -> SnapshotInfo:
        """Take snapshot SNAP of server NAME, running or not (a running one is frozen for the
        copy); SNAP None names it from the UTC time, e.g. "s20261206-153012"."""
        if snap is not None:
            validate.user_snapshot_name(snap)
        return self._take_snapshot(name, snap)

    def _take_snapshot(self, name: str, snap: str | None) -> SnapshotInfo:
        """snapshot_create for any valid name, a backup's own included."""
        from . import snapshots

        with self._lock(name):
            self.spec(name)
            self._refuse_on_btrfs(name, "a snapshot")
            snapshots.recover(self, name)
            snapshots.sweep(self, name)
            return snapshots.create(self, name, snap)

    def snapshot_list(self, name: str) -> builtins.list[SnapshotInfo]:
        """Server NAME's snapshots, oldest first (not the one a running backup reads through)."""
        from . import snapshots

        return [info for info in snapshots.listing(self, name)
                if not info.name.startswith(validate.BACKUP_SNAPSHOT_PREFIX)]

    def snapshot_restore(self, name: str, snap: str) -> Status:
        """Stop server NAME, put snapshot SNAP back as its disk (the snapshot stays) and start it."""
        from . import snapshots

        validate.user_snapshot_name(snap)
        with self._lock(name):
            self.spec(name)
            self._refuse_on_btrfs(name, "restoring a snapshot")
            snapshots.recover(self, name)
            snapshots.sweep(self, name)
            snapshots.restore(self, name, snap)
            self._start_locked(self.spec(name))
        return self.status(name, with_addresses=False)

    def snapshot_delete(self, name: str, snap: str) -> None:
        """Delete snapshot SNAP of server NAME; deleting a missing one succeeds."""
        self._drop_snapshot(name, validate.user_snapshot_name(snap))

    def _drop_snapshot(self, name: str, snap: str) -> None:
        """snapshot_delete for any valid name, a backup's own included."""
        from . import snapshots

        with self._lock(name):
            self.spec(name)
            snapshots.recover(self, name)
            snapshots.sweep(self, name)
            snapshots.delete(self, name, snap)

    def snapshot_image(self, name: str, snap: str) -> Path:
        """The image of snapshot SNAP, for reading only (NotFound if there is none)."""
        from . import snapshots

        return snapshots.image(self, name, snap)

    # -- limits ----------------------------------------------------------------------------

    def update(self, name: str, limits: Limits) -> Status:
        """Give the server new resource limits: all of LIMITS replaces what it had.

        They are stored in config.json, so every later start uses them; while the server
        runs they hold at once (its cgroups, and its disk grown online), else its disk is
        grown offline now. A disk only grows: a smaller one is refused (InvalidInput). On a
        host where the engine may not resize a mounted filesystem (no CAP_SYS_RESOURCE) a
        running server's disk grows at its next start; until then the status returned (and
        every status) says "disk_grow_pending": true.
        """
        limits = limits.validated()
        with self._lock(name):
            spec = self.spec(name)
            if limits.disk_bytes < spec.limits.disk_bytes:
                raise InvalidInput(
                    f"the disk of {name!r} can only grow: it has {_mib(spec.limits.disk_bytes)}, "
                    f"{_mib(limits.disk_bytes)} was asked for"
                )
            running = self._running_init(name) is not None
            if running:
                self._apply_live(name, limits)
            # Recorded before the disk grows: a crash while it grows leaves the size asked for
            # (and the pending mark) for the next update or start to finish.
            write_json(self._dir(name) / "config.json", dataclasses.replace(spec, limits=limits).to_json())
            self._grow_disk(name, limits.disk_bytes, running=running)
        return self.status(name)

    def _apply_live(self, name: str, limits: Limits) -> None:
        """Write LIMITS to the running server's cgroups; if the kernel refuses one (say a
        memory limit below what the server uses now), put back the ones it had."""
        device = self._disk_device(name)
        before = self.cgroups.limits(name, device)
        try:
            self.cgroups.update(name, limits, device)
            storage = self._btrfs_storage(name)
            if storage is not None:
                from . import qgroups

                qgroups.limit_io(self.cgroups, name, storage, limits)
        except EngineError as exc:
            if before is not None:
                try:
                    self.cgroups.update(name, before, device)
                except EngineError:
                    pass  # the first error is the one to report
            raise Conflict(f"the new limits cannot be applied to running server {name!r}: {exc}") from exc

    def _release_io(self, device: str, image: Path) -> None:
        """Lift the ceilings start put on DEVICE outside the server's group (cgroups.limit_io),
        before its last writeback (unmounted with the server's last process) must pass them.
        Only while the device still serves IMAGE (held open, so it cannot change hands) or
        serves nothing: another server's start may have taken it since, and set its own."""
        from . import loopdev
        from .cgroups import block_device_number

        try:
            with loopdev.held(device, image):
                self.cgroups.release_io(block_device_number(device))
            return
        except OSError:
            pass
        if loopdev.backing_file(device) is None:
            try:
                self.cgroups.release_io(block_device_number(device))
            except EngineError:
                pass  # the device node is gone: nothing of ours is left on it

    def _disk_device(self, name: str) -> str | None:
        """"MAJOR:MINOR" of the running server's loop device, which its I/O limits are on."""
        from .cgroups import block_device_number

        runtime = self._runtime(name)
        if runtime is None or not runtime.loop_device:
            return None
        return block_device_number(runtime.loop_device)

    def _grow_disk(self, name: str, size: int, running: bool) -> None:
        """Grow the server's image to SIZE bytes and its filesystem with it (online if RUNNING);
        nothing to do when it has that size and no earlier grow is pending. Where a running
        server's cannot grow online, the pending mark is all: its next start grows it."""
        from . import disk

        storage = self._btrfs_storage(name)
        if storage is not None:  # a new qgroup limit, online or not: nothing to resize
            from . import qgroups

            qgroups.set_limit(storage.subvolume, size)
            return
        server_dir = self._dir(name)
        image = server_dir / "disk.img"
        pending = server_dir / DISK_GROW_PENDING
        if image.stat().st_size >= size and not pending.exists():
            return
        write_json(pending, {"disk_bytes": size})
        if running and not disk.can_grow_online():
            return
        disk.grow_file(image, size)
        if running:
            runtime = self._runtime(name)
            if runtime is None or not runtime.loop_device:
                raise EngineError(f"the loop device of running server {name!r} is not recorded")
            disk.grow_online(runtime.loop_device, image, server_dir / "disk")
        else:
            self._clean_leftovers(name)  # e2fsck must not meet the image still attached
            disk.grow_offline(image)
        pending.unlink()

    # -- status ----------------------------------------------------------------------------

    def _remember_disk_usage(self, name: str, init_pid: int) -> None:
        used = self._disk_used(name, init_pid)
        if used is not None:
            # Not fsync'ed (1-3 ms of every stop): a figure for `list` and `status` of a stopped
            # server, which a crash may tear or lose; they read a torn file as no figure.
            write_json(self._dir(name) / "usage.json", {"disk_used_bytes": used}, durable=False)

    def status(self, name: str, *, with_addresses: bool = True, with_usage: bool = True) -> Status:
        """What the kernel says of server NAME. Without WITH_USAGE a running server's usage is
        left at zero (the reconciler's periodic look: the usage sampler reads it)."""
        spec = self.spec(name)
        init_pid = self._running_init(name)
        if init_pid is None:
            from .listing import disk_used as remembered_disk_used

            usage = Usage(disk_used_bytes=remembered_disk_used(str(self.config.root), validate.server_name(name)))
            return self._status(spec, "stopped", None, list(spec.addresses), spec.limits, usage)
        usage = self._usage(name, init_pid) if with_usage else Usage()
        kernel_limits = self.cgroups.limits(name, self._disk_device(name)) or spec.limits
        limits = dataclasses.replace(kernel_limits, disk_bytes=spec.limits.disk_bytes,
                                     network_admin=_holds_net_admin(init_pid, spec.limits.network_admin))
        ips = list(spec.addresses)
        if with_addresses:
            from . import network

            ips = network.netns_addresses(init_pid)
        status = self._status(spec, "running", init_pid, ips, limits, usage)
        runtime = self._runtime(name)
        if runtime is not None and runtime.rescue_version:
            status = dataclasses.replace(status, rescue=True)
        return status

    def _usage(self, name: str, init_pid: int) -> Usage:
        from . import rtnl

        runtime = self._runtime(name)
        cg = self.cgroups.usage(name)
        with rtnl.Socket() as sock:
            stats = sock.link_stats(runtime.host_veth) if runtime else None
        return _with_network(dataclasses.replace(cg, disk_used_bytes=self._disk_used(name, init_pid) or 0), stats,
                             runtime.init_start_time if runtime else 0)

    def _status(self, spec, state, init_pid, ips, limits, usage) -> Status:
        # Said only when true, so the status of nearly every server stays as it was.
        pending = (self._dir(spec.name) / DISK_GROW_PENDING).exists()
        return Status(
            name=spec.name,
            state=state,
            init_pid=init_pid,
            ips=ips,
            hostname=spec.hostname,
            template=f"{spec.template}:{spec.template_version}",
            uid_base=spec.uid_base,
            limits=limits,
            usage=usage,
            autostart=spec.autostart,
            extra={"disk_grow_pending": True} if pending else {},
        )

    def sample(self, names: Iterable[str]) -> dict[str, Usage]:
        """The usage of each running server among NAMES, read for all in one pass: the
        network counters of every port of the bridge from one netlink dump, then per server
        its cgroup counters and a statvfs of its disk. A server that is not running, not
        there, or stopped while it was read is left out (its figures would be a dead cgroup's
        zeros), so a stopped server has no sample."""
        from . import rtnl

        with rtnl.Socket() as sock:
            bridge = sock.link_index(self.config.bridge)
            ports = sock.port_stats(bridge) if bridge is not None else {}
        found = {}
        for name in names:
            try:
                runtime = self._runtime(name)
            except (InvalidInput, NotADirectoryError):
                continue
            if runtime is None or not _alive(runtime):
                continue
            try:
                usage = dataclasses.replace(self.cgroups.usage(name),
                                            disk_used_bytes=self._disk_used(name, runtime.init_pid) or 0)
            except OSError:
                if not _alive(runtime):
                    continue  # its cgroup went away as it stopped
                raise
            if not _alive(runtime):
                continue  # it stopped while its files were read
            found[name] = _with_network(usage, ports.get(runtime.host_veth), runtime.init_start_time)
        return found

    def list(self) -> Iterator[Status]:
        for name in self.names():
            try:
                yield self.status(name)
            except NotFound:
                pass  # deleted by another process while we listed

    # -- backups (backups.py) ---------------------------------------------------------------

    def backup_path(self, archive: str) -> Path:
        """The archive's path: a validated name, inside the backup directory."""
        from . import backups

        return backups.path_of(self.config.backup_dir, archive)

    def backup_create(self, name: str, progress: Progress | None = None) -> BackupInfo:
        """Archive server NAME's own files into the backup directory (running: through a
        temporary snapshot); PROGRESS gets (bytes done, bytes total) a few times a second."""
        from . import backups

        self._refuse_on_btrfs(name, "a backup")
        return backups.backup_server(self, name, progress)

    def backup_list(self, server: str | None = None) -> builtins.list[BackupInfo]:
        """Complete backups (of SERVER), newest first."""
        from . import backups

        return backups.list_backups(self.config.backup_dir, None if server is None else validate.server_name(server))

    def backup_verify(self, archive: str) -> BackupInfo:
        """Check ARCHIVE in full (checksum, every member); InvalidInput saying what is wrong."""
        from . import backups

        return backups.verify(self.config.backup_dir, archive)[0]

    def backup_restore(self, archive: str, name: str, progress: Progress | None = None) -> Status:
        """Verify ARCHIVE, unpack it into a new image for the existing server NAME (owners
        moved to NAME's uid range), stop NAME, swap the images, start it. A bad archive
        leaves NAME untouched."""
        from . import backups

        self._refuse_on_btrfs(name, "restoring a backup")
        return backups.restore_server(self, archive, name, progress)

    def backup_delete(self, archive: str) -> None:
        """Remove a backup; a missing one is no error."""
        from . import backups

        backups.delete(self.config.backup_dir, archive)

    def backup_push(self, archive: str, destination: str) -> None:
        """Copy ARCHIVE and its manifest to USER@HOST:/PATH (rsync over SSH) or a local /PATH."""
        from . import backups

        backups.push(self.backup_path(archive), destination, self.config.backup_ssh_options)

    # -- migration between nodes (migrate.py) ---------------------------------------------

    def migrate_send(self, name: str, target: MigrationTarget, *, ship_template: bool = False,
                     progress: Progress | None = None) -> ShipResult:
        """Ship stopped server NAME (image and config; with SHIP_TEMPLATE its template version)
        into TARGET's incoming/NAME/ with rsync over SSH; PROGRESS gets (bytes done, total)
        about once a second. The source is left as it was, whatever happens."""
        from . import migrate

        self._refuse_on_btrfs(name, "migration")
        return migrate.send(self, name, target, ship_template=ship_template, progress=progress)

    def migrate_receive(self, name: str, *, addresses: builtins.list[str] | None = None) -> ServerSpec:
        """Adopt incoming/NAME/ as stopped server NAME (with ADDRESSES instead of its own);
        a re-run after a crash finishes the same receive."""
        from . import migrate

        return migrate.receive(self, name, addresses)

    def migrate_discard(self, name: str) -> None:
        """Remove incoming/NAME/ and an unfinished receive of NAME. Idempotent."""
        from . import migrate

        migrate.discard(self, name)

    def incoming(self) -> builtins.list[str]:
        """Names with something under incoming/ or a receive not finished."""
        from . import migrate

        return migrate.incoming_names(self.config)

    # -- reinstall, rescue, root's password (reinstall.py, rescue.py) -----------------------

    def reinstall(self, name: str, template: str | None = None) -> Status:
        """Rebuild server NAME from TEMPLATE's current version (None: its own template's):
        stop it, give it a fresh empty disk of the same size, start it. Its name, hostname,
        addresses, limits, uid range and autostart stay; its files are gone."""
        from .reinstall import reinstall

        return reinstall(self, name, template)

    def rescue_start(self, name: str) -> Status:
        """Stop NAME if it runs, and start it from the rescue system with its own files at
        /mnt (see rescue.py). Already in rescue: nothing to do."""
        with self._lock(name):
            spec = self.spec(name)
            runtime = self._runtime(name)
            if runtime is not None and _alive(runtime) and runtime.rescue_version:
                return self.status(name)
            self._stop_locked(name, STOP_TIMEOUT)
            from . import faults

            faults.checkpoint("rescue", "stopped")
            self._start_locked(spec, rescue=True)
        return self.status(name)

    def rescue_leave(self, name: str) -> Status:
        """Stop NAME's rescue system and start it normally. Running normally already:
        nothing to do."""
        with self._lock(name):
            spec = self.spec(name)
            runtime = self._runtime(name)
            if runtime is not None and _alive(runtime) and not runtime.rescue_version:
                return self.status(name)
            self._stop_locked(name, STOP_TIMEOUT)
            self._start_locked(spec)
        return self.status(name)

    def set_root_password(self, name: str, password: str) -> None:
        """Set root's password of the running server NAME: with the guest's own chpasswd
        when it runs normally; in rescue mode, that of its own system at /mnt (rescue.py)."""
        from . import validate as check

        check.password(password)
        with self._lock(name):
            self.init_pid(name)  # Conflict if it is not running
            runtime = self._runtime(name)
            in_rescue = runtime is not None and bool(runtime.rescue_version)
        if not in_rescue:
            self.accounts(name).set_password("root", password)
            return
        from .. import passwords
        from .rescue import set_root_password_hash

        set_root_password_hash(self, name, passwords.sha512_crypt(password))

    # -- inside the server -----------------------------------------------------------------

    def init_pid(self, name: str) -> int:
        """The running server's init pid, or Conflict if it is not running."""
        self.spec(name)
        pid = self._running_init(name)
        if pid is None:
            raise Conflict(f"server {name!r} is not running")
        return pid

    def cgroup_procs(self, name: str) -> builtins.list[Path]:
        return self.cgroups.procs_files(name)

    def run(self, name: str, argv: builtins.list[str], input: str | None = None, timeout: float = 60.0):
        """Run ARGV inside the running server and collect its exit status and output."""
        from . import guest

        return guest.run(self.init_pid(name), argv, self.cgroup_procs(name), input=input, timeout=timeout)

    def accounts(self, name: str):
        from .accounts import Accounts

        return Accounts(self, name)

    def services(self, name: str):
        from .services import Services

        return Services(self, name)


def _alive(runtime: RuntimeState) -> bool:
    """Whether the init RUNTIME recorded is still the one running."""
    return still_running(runtime.init_pid, runtime.init_start_time, runtime.boot_id)


def _with_network(usage: Usage, stats, started: int) -> Usage:
    """USAGE with the counters of the server's host veth STATS (rtnl.LinkStats, or None: no
    link) seen from the server: what the host end transmits came in."""
    if stats is None:
        return dataclasses.replace(usage, started=started)
    return dataclasses.replace(
        usage, net_in_bytes=stats.tx_bytes, net_out_bytes=stats.rx_bytes, net_in_packets=stats.tx_packets,
        net_out_packets=stats.rx_packets, started=started,
    )


def _holds_net_admin(init_pid: int, configured: bool) -> bool:
    """Whether the running server's init has CAP_NET_ADMIN in its bounding set: the switch takes
    effect at start, so a change made since shows only after the next one."""
    from . import capabilities

    try:
        return bool(capabilities.bounding_set(init_pid) >> capabilities.CAP_NET_ADMIN & 1)
    except OSError:  # init ended meanwhile
        return configured


def make_disk_image(path: Path, size_bytes: int, uid_base: int) -> None:
    """A sparse ext4 image: the server's own filesystem, so filling it stops at its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as fh:
        fh.truncate(size_bytes)
    import subprocess  # ~2 ms at import (threading, selectors); only create and reinstall run it

    result = subprocess.run(
        [
            "mkfs.ext4", "-q", "-F", "-m", "0", "-L", "vserver",
            "-E", f"root_owner={uid_base}:{uid_base},lazy_itable_init=1,lazy_journal_init=1",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise EngineError(f"mkfs.ext4 failed: {result.stderr.strip()}")


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def disk_used(init_pid: int) -> int | None:
    """Bytes used on the server's own filesystem, seen through its root (overlay reports the
    upper layer's filesystem)."""
    try:
        st = os.statvfs(f"/proc/{init_pid}/root/")
    except OSError:
        return None
    return (st.f_blocks - st.f_bfree) * st.f_frsize

"""Two nodes on one machine, for the cluster tests (tests/panel/test_cluster_*.py, issue 16).

Each node has what a real one has: its own state root, bridge and subnet (198.19.240.0/24 and
198.19.241.0/24, which no other test uses), uid range, queue ("node-a", "node-b"), a real
`manage.py nodeworker` process (tests/panel/faults.WorkerProcess, with tests/cluster_settings.py),
its migration key pair (engine.migrate.ensure_node_key) and a private sshd on a loopback port
whose AuthorizedKeysFile holds the OTHER node's key behind the forced rrsync command
(engine.migrate.authorized_keys_line), as a joined node's keys file does. The database (the
test's, on a file the workers open) and Redis (the session's) are shared.

The engines, their busybox templates and the sshds are made once per session (cluster_nodes);
the rows and the worker processes per test (cluster). Afterwards every server, incoming/ copy,
bridge and root is removed, and tests/leaks.py checks both installations.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.leaks import CLUSTER_ENVS, _leaks_of
from tests.panel.faults import WorkerProcess, wait_until

SSHD = "/usr/sbin/sshd"
SETTINGS = "tests.cluster_settings"
NETWORKS = {"a": ("198.19.240.0/24", "198.19.240.1"), "b": ("198.19.241.0/24", "198.19.241.1")}


class ClusterNode:
    """One node's engine, key and sshd, in this (the test's) process."""

    def __init__(self, name: str, env: dict[str, str], directory: Path) -> None:
        from vservers.engine import Engine
        from vservers.engine.config import EngineConfig

        self.name = name
        self.env = env
        self.queue = f"node-{name}"
        self.bridge = env["VSERVER_BRIDGE"]
        self.network, self.gateway = NETWORKS[name]
        self.engine = Engine(EngineConfig.from_env(env))
        self.directory = directory
        self.sshd: subprocess.Popen | None = None
        self.port = 0
        self.host_key = ""
        self.public_key = ""

    @property
    def config(self):
        return self.engine.config

    def install(self) -> None:
        from vservers.engine import migrate, templates

        remove_everything(self.engine)
        shutil.rmtree(self.config.templates_dir, ignore_errors=True)
        templates.build(self.config, "busybox")
        self.config.servers_dir.mkdir(parents=True, exist_ok=True)
        _key, self.public_key = migrate.ensure_node_key(self.config)

    def start_sshd(self, other_public_key: str) -> None:
        """The node's sshd on a loopback port: root by key only, and only the other node's key,
        behind the forced command that lets it write into this node's incoming/ and nothing else."""
        from vservers.engine import migrate

        keys = self.directory
        keys.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host")], check=True)
        self.host_key = " ".join((keys / "host.pub").read_text().split()[:2])
        authorized = keys / "authorized_keys"
        authorized.write_text(migrate.authorized_keys_line(other_public_key, self.config) + "\n")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        (keys / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\nPidFile none\n"
            f"AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\nAllowUsers root\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        )
        self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(keys / "sshd_config")],
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.sshd.poll() is None and time.monotonic() < deadline, "the node's sshd did not start"
                time.sleep(0.02)

    def stop_sshd(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            self.sshd.wait(timeout=20)
        self.sshd = None

    def remove(self) -> None:
        from vservers.engine import network

        remove_everything(self.engine)
        network.remove_bridge(self.bridge)
        shutil.rmtree(self.config.root, ignore_errors=True)

    # -- what the tests look at ---------------------------------------------------------------

    def has(self, server) -> str:
        """"running", "stopped", or "missing" on this node's kernel and disk."""
        if server.engine_name not in self.engine.names():
            return "missing"
        return self.engine.status(server.engine_name, with_addresses=False, with_usage=False).state

    def incoming(self) -> list[str]:
        return self.engine.incoming()

    def leaks(self) -> list[str]:
        """Kernel objects of this installation beyond its bridge and the bridge's tables."""
        return [leak for leak in _leaks_of(self.env)
                if leak != f"network interface {self.bridge}"
                and not (leak.startswith("nftables table ") and leak.endswith(self.bridge))]


def remove_everything(engine) -> None:
    """Every server of ENGINE (stopped first) and everything under its incoming/."""
    for name in engine.names():
        engine.delete(name)
    if engine.config.servers_dir.is_dir():  # half-made ones have no config.json
        for path in engine.config.servers_dir.iterdir():
            engine.delete(path.name)
    incoming = engine.config.root / "incoming"
    if incoming.is_dir():
        for path in incoming.iterdir():
            engine.migrate_discard(path.name)


@pytest.fixture(scope="session")
def cluster_nodes(tmp_path_factory, panel_engine):
    """The two nodes' installations and sshds, once per session (after the panel's own engine,
    whose session lock keeps a second test session out)."""
    if os.geteuid() != 0:
        pytest.skip("the nodes' engines need root")
    if not os.path.exists(SSHD) or shutil.which("rrsync") is None:
        pytest.skip("openssh-server and rsync (rrsync) are needed (make install-test)")
    directory = tmp_path_factory.mktemp("cluster")
    nodes = {name: ClusterNode(name, env, directory / f"sshd-{name}") for name, env in CLUSTER_ENVS.items()}
    made_run_dir = not os.path.isdir("/run/sshd")
    if made_run_dir:
        os.mkdir("/run/sshd", 0o755)
    try:
        for node in nodes.values():
            node.install()
        nodes["a"].start_sshd(nodes["b"].public_key)
        nodes["b"].start_sshd(nodes["a"].public_key)
        yield nodes
    finally:
        for node in nodes.values():
            node.stop_sshd()
            node.remove()
        if made_run_dir:
            os.rmdir("/run/sshd")


@pytest.fixture
def cluster(file_database, rq_redis, panel_redis, cluster_nodes, settings, django_user_model, tmp_path):
    """The panel's rows for two nodes "a" and "b" (each online, with its pool, SSH address, host
    key, public key and state root, busybox built), plans small and medium, tenant acme (admin
    alice) and an operator; and `start(name, fault="")`, which starts a node's worker process
    (stopped at the end). Attributes: a, b (ClusterNode), node_a, node_b (Node rows), pool_a,
    pool_b, small, medium, busybox, acme, alice, operator, database, workers."""
    from django.utils import timezone

    from accounts.models import Membership, Tenant
    from vservers.engine import templates
    from vservers.models import BuiltTemplate, IPPool, Node, Plan, Template
    from vservers.nodes import credentials, redis_acl

    settings.RQ_QUEUES = {
        **settings.RQ_QUEUES,
        **{node.queue: {"URL": panel_redis, "DEFAULT_TIMEOUT": 3600, "SERIALIZER": "rq.serializers.JSONSerializer"}
           for node in cluster_nodes.values()},
    }
    w = SimpleNamespace(database=file_database, workers=[], database_urls={}, **cluster_nodes)
    w.busybox = Template.objects.create(name="busybox", display_name="BusyBox")
    for name, node in cluster_nodes.items():
        row = Node.objects.create(
            name=name, queue_name=node.queue, last_seen=timezone.now(), cpus=2, memory_mb=4096, disk_mb=51200,
            ssh_address=f"127.0.0.1:{node.port}", ssh_host_key=node.host_key, ssh_public_key=node.public_key,
            vserver_root=str(node.config.root),
        )
        # The node's own database role, as a joined node has (vservers.nodes.credentials): its
        # worker runs under it, so the row-level policies are what the real jobs meet.
        setattr(w, f"node_{name}", row)
        w.database_urls[name] = credentials.grant(row)
        row.save()
        network, gateway = NETWORKS[name]
        setattr(w, f"pool_{name}", IPPool.objects.create(name=f"{name}-net", node=row, network=network,
                                                          gateway=gateway))
        info = templates.get(node.config, "busybox")
        BuiltTemplate.objects.create(template=w.busybox, node=row, version=info.version,
                                     size_bytes=info.size_bytes, checked=timezone.now())
    # Each node's worker under its own Redis user, made as the join makes it.
    redis_urls = {name: redis_acl.grant(getattr(w, f"node_{name}"), rq_redis) for name in cluster_nodes}
    w.small = Plan.objects.create(name="small", cpus="0.5", memory_mb=64, disk_mb=256, pids=128)
    w.medium = Plan.objects.create(name="medium", cpus="1", memory_mb=256, disk_mb=512, pids=512)
    w.acme = Tenant.objects.create(name="Acme", slug="acme")
    w.alice = django_user_model.objects.create_user("alice", "alice@acme.example")
    Membership.objects.create(user=w.alice, tenant=w.acme, role=Membership.ADMIN)
    w.operator = django_user_model.objects.create_user("operator", is_staff=True)

    def start(name: str, fault: str = "", engine_fault: str = "") -> WorkerProcess:
        """Node NAME's worker; FAULT stops it at a point of the panel's (vservers.jobs
        TEST_FAULT), ENGINE_FAULT at one of the engine's (vservers.engine.faults)."""
        node = cluster_nodes[name]
        log = tmp_path / f"worker-{name}-{len(w.workers) + 1}.log"
        env = {**node.env, "VSERVER_TEST_FAULT": engine_fault} if engine_fault else dict(node.env)
        if w.database_urls[name]:  # PostgreSQL (on SQLite: the test's file, as the panel's)
            env["DATABASE_URL"] = w.database_urls[name]
        worker = WorkerProcess(file_database, redis_urls[name], log, fault=fault, queues=(node.queue,),
                               env=env, settings=SETTINGS)
        w.workers.append(worker)
        return worker

    w.start = start
    try:
        yield w
    finally:
        for worker in w.workers:
            worker.stop()
        for node in cluster_nodes.values():
            remove_everything(node.engine)
        for name in w.database_urls:
            credentials.revoke(getattr(w, f"node_{name}"))


def keep_online(*nodes) -> None:
    """Their heartbeat now (a node's worker writes it; a test that waits long says so itself)."""
    from django.utils import timezone

    from vservers.models import Node

    Node.objects.filter(pk__in=[n.pk for n in nodes]).update(last_seen=timezone.now())


def wait_finished(operation, timeout: float = 180.0, what: str = ""):
    """Wait until OPERATION has ended; returns it refreshed."""
    from vservers.models import FINISHED

    def ended():
        operation.refresh_from_db()
        return operation.status in FINISHED

    wait_until(ended, what or f"operation {operation.pk} ({operation.kind}) to end", timeout=timeout)
    return operation


def descendants(pid: int) -> list[int]:
    """Every live process below PID (children first found, then theirs)."""
    from vservers.engine import procfs

    found: list[int] = []
    parents = {pid}
    changed = True
    while changed:
        changed = False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in found:
                continue
            stat = procfs.read_stat(int(entry.name))
            if stat is not None and stat.ppid in parents:
                found.append(int(entry.name))
                parents.add(int(entry.name))
                changed = True
    return found

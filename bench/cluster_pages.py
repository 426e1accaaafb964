"""The panel's list pages at cluster scale, on PostgreSQL beside SQLite in the same run.

A world of rows only (nothing is provisioned, no address is ever configured or contacted): two
online nodes with 500 servers each (issue 16: 2 nodes x 500 servers), four tenants, 20
operations per server (20,000, bulk-created). Then each list page is asked through the real
panel in-process (django.test.Client: URL routing, every middleware, the view, the template or
DRF's renderer; no network), 3 warm-up requests and N timed ones each: median and p95, the
queries of one request, the bytes and rows. The goal stated in the issue: under 100 ms each.

The same world and pages run twice, each in a child process of its own: on SQLite (a file in a
temporary directory, DATABASE_URL=sqlite:////...) and on PostgreSQL (a private cluster made by
scripts/with-postgres for the run and removed after it; fsync off there, which does not matter
to pages that only read). After the bulk load PostgreSQL's statistics are gathered (ANALYZE),
as autovacuum would do on a real installation.

    .venv/bin/python bench/cluster_pages.py            # 2 x 500 servers, 20,000 operations
    .venv/bin/python bench/cluster_pages.py --smoke    # 2 x 20 servers: checks the benchmark
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, report  # noqa: E402
from bench.common import md_table, summary  # noqa: E402

NAME = "cluster_pages"
PAGE_TARGET_MS = 100.0
OPS_PER_SERVER = 20
TENANTS = 4
# Rows only: these networks are never configured on any bridge nor contacted.
NODES = [("node-a", "198.18.0.0/22"), ("node-b", "198.19.8.0/22")]
# (key, label, user, url name, API?)
PAGES = [
    ("op_servers", "operator: servers (50 per page)", "operator", "op_servers", False),
    ("op_operations", "operator: operations (50 per page)", "operator", "op_operations", False),
    ("op_nodes", "operator: nodes", "operator", "op_nodes", False),
    ("op_all_servers", "operator: /servers/ (every tenant's)", "operator", "server_list", False),
    ("tenant_servers", "tenant: server list (1/4 of the servers)", "alice", "server_list", False),
    ("api_servers_tenant", "API: servers (tenant)", "alice", "api-servers", True),
    ("api_operations_tenant", "API: operations (tenant)", "alice", "api-operations", True),
    ("api_servers_operator", "API: servers (operator)", "operator", "api-servers", True),
    ("api_operations_operator", "API: operations (operator)", "operator", "api-operations", True),
    ("api_nodes", "API: operator nodes", "operator", "api-op-nodes", True),
]


def log(msg: str) -> None:
    common.log(msg)


# --- the child: one database ------------------------------------------------------------------


def setup_django(tmp: Path) -> None:
    """The panel's settings (the database from DATABASE_URL), plus the test client's host."""
    (tmp / "benchcluster_settings.py").write_text(
        "from panel.settings import *  # noqa: F401,F403\n"
        "from panel.settings import ALLOWED_HOSTS\n\n"
        "ALLOWED_HOSTS = [*ALLOWED_HOSTS, 'testserver']\n"
    )
    sys.path.insert(0, str(tmp))
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchcluster_settings"
    os.environ.setdefault("DJANGO_SECRET_KEY", os.urandom(32).hex())
    os.environ["DJANGO_DEBUG"] = "0"
    import django

    django.setup()


def make_world(servers_per_node: int) -> dict:
    """Operator, four tenants (alice admins the first), a plan and template, the two nodes
    (online: a heartbeat just now) with a pool each, their servers round-robin over the tenants
    and over the states running, stopped, error, and OPS_PER_SERVER finished operations each."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from accounts.models import Membership, Tenant
    from vservers.models import IPAddress, IPPool, Node, Operation, Plan, State, Template, VirtualServer

    User = get_user_model()
    t0 = time.monotonic()
    now = timezone.now()
    operator = User.objects.create_user("operator", "ops@bench.example", is_staff=True)
    alice = User.objects.create_user("alice", "alice@bench.example")
    tenants = [Tenant.objects.create(name=f"Tenant {i}", slug=f"tenant{i}", max_servers=100_000)
               for i in range(TENANTS)]
    Membership.objects.create(user=alice, tenant=tenants[0], role=Membership.ADMIN)
    plan = Plan.objects.create(name="small", cpus="0.5", memory_mb=64, disk_mb=256, pids=128)
    template = Template.objects.create(name="busybox", display_name="BusyBox")
    states = [State.RUNNING, State.RUNNING, State.STOPPED, State.ERROR]
    kinds = [("provision", {}), ("start", {}), ("stop", {}), ("restart", {}), ("refresh", {}),
             ("account_add", {"account": "web"}), ("service_restart", {"service": "httpd"}), ("stop", {}),
             ("start", {}), ("change_plan", {"plan_id": plan.pk})]
    users = [operator, alice, None]
    count = 0
    for n, (node_name, network) in enumerate(NODES):
        node = Node.objects.create(name=node_name, queue_name=f"node-{node_name}", cpus=64, memory_mb=262144,
                                   disk_mb=8 << 20, last_seen=now, vserver_root=f"/var/lib/vservers-{node_name}")
        net = ipaddress.ip_network(network)
        pool = IPPool.objects.create(name=f"pool-{node_name}", node=node, network=network,
                                     gateway=str(net.network_address + 1))
        servers = VirtualServer.objects.bulk_create(
            VirtualServer(tenant=tenants[i % TENANTS], name=f"n{n}s{i}", hostname=f"n{n}s{i}.bench.example",
                          plan=plan, template=template, node=node, state=states[i % len(states)],
                          **({"cpu_seconds": 12.5, "memory_bytes": 3 << 20, "pids": 4, "disk_used_bytes": 30 << 10,
                              "sampled_at": now} if states[i % len(states)] == State.RUNNING else {}))
            for i in range(servers_per_node)
        )
        IPAddress.objects.bulk_create(
            IPAddress(pool=pool, address=str(net.network_address + 2 + i), server=server)
            for i, server in enumerate(servers)
        )
        Operation.objects.bulk_create(
            (Operation(server=server, kind=kinds[j % len(kinds)][0], params=kinds[j % len(kinds)][1],
                       status="failed" if j == OPS_PER_SERVER - 1 and i % 7 == 0 else "succeeded",
                       output="ok", started=now, finished=now, requested_by=users[(i + j) % 3],
                       error="example failure" if j == OPS_PER_SERVER - 1 and i % 7 == 0 else "")
             for i, server in enumerate(servers) for j in range(OPS_PER_SERVER)),
            batch_size=2000,
        )
        count += len(servers)
    world = {
        "nodes": len(NODES), "servers": VirtualServer.objects.count(), "operations": Operation.objects.count(),
        "tenants": TENANTS, "build_s": round(time.monotonic() - t0, 2),
        "alice_servers": VirtualServer.objects.filter(tenant=tenants[0]).count(),
    }
    log(f"  world: {world}")
    return world


def analyze() -> None:
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def time_pages(reps: int, explain: bool) -> dict:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    User = get_user_model()
    clients = {}
    for who in ("alice", "operator"):
        client = Client()
        client.force_login(User.objects.get(username=who))
        clients[who] = client
    out = {}
    for key, label, who, url_name, api in PAGES:
        client, url = clients[who], reverse(url_name)
        headers = {"Accept": "application/json"} if api else {}

        def get(client=client, url=url, headers=headers, who=who):
            response = client.get(url, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"GET {url} as {who}: status {response.status_code}")
            return response

        for _ in range(3):
            get()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            get()
            times.append((time.perf_counter() - t0) * 1000)
        with CaptureQueriesContext(connection) as captured:
            response = get()
        queries = captured.captured_queries
        page = {"label": label, "url": url, "user": who, "ms": summary(times),
                "samples_ms": [round(t, 3) for t in times], "queries": len(queries),
                "query_ms": round(sum(float(q["time"]) for q in queries) * 1000, 2),
                "bytes": len(response.content)}
        if explain:
            slowest = max(queries, key=lambda q: float(q["time"]))
            page["slowest_query"] = {"ms": round(float(slowest["time"]) * 1000, 2), "sql": slowest["sql"][:2000]}
        out[key] = page
        log(f"  {key}: median {page['ms']['median']:.1f} ms, p95 {page['ms']['p95']:.1f} ms, "
            f"{page['queries']} queries ({page['query_ms']:.1f} ms), {page['bytes'] // 1000} kB")
    return out


def child(args) -> None:
    with tempfile.TemporaryDirectory(prefix="vservers-cluster-pages-") as tmp:
        setup_django(Path(tmp))
        from django.core.management import call_command
        from django.db import connection

        log(f"{connection.vendor}: migrate")
        t0 = time.monotonic()
        call_command("migrate", verbosity=0, interactive=False)
        migrate_s = time.monotonic() - t0
        world = make_world(args.servers_per_node)
        analyze()
        pages = time_pages(args.reps, explain=True)
        if connection.vendor == "postgresql":
            number = connection.cursor().connection.info.server_version  # 150018 for 15.18
            version = f"{number // 10000}.{number % 10000}"
        else:
            import sqlite3

            version = sqlite3.sqlite_version
        Path(args.out).write_text(json.dumps({"vendor": connection.vendor, "version": version,
                                              "migrate_s": round(migrate_s, 2), "world": world,
                                              "pages": pages}))
        connection.close()


# --- the parent: both databases, the report ---------------------------------------------------


def run_child(args, database: str, tmp: Path) -> dict:
    out = tmp / f"{database}.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--out", str(out),
            "--servers-per-node", str(args.servers_per_node), "--reps", str(args.reps)]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database == "sqlite":
        env["DATABASE_URL"] = f"sqlite:///{tmp / 'panel.sqlite3'}"  # an absolute path: sqlite:////...
    else:
        argv = [str(common.REPO / "scripts" / "with-postgres"), *argv]
    log(f"{database}: {args.servers_per_node * len(NODES)} servers, "
        f"{args.servers_per_node * len(NODES) * OPS_PER_SERVER} operations, {args.reps} requests per page")
    subprocess.run(argv, cwd=common.REPO, env=env, check=True)
    return json.loads(out.read_text())


def markdown(result: dict) -> str:
    runs = result["databases"]
    world = runs["postgresql"]["world"]
    lines = [
        f"## Panel list pages at cluster scale ({NAME}.py)",
        "",
        f"{world['nodes']} nodes x {world['servers'] // world['nodes']} servers, {world['operations']:,} "
        f"operations, {world['tenants']} tenants (alice: {world['alice_servers']} servers); "
        f"{result['reps']} requests per page through the panel in-process (django.test.Client). "
        f"PostgreSQL {runs['postgresql']['version']}, SQLite {runs['sqlite']['version']}. "
        f"Goal: under {PAGE_TARGET_MS:.0f} ms each.",
        "",
    ]
    rows = []
    for key, label, *_ in PAGES:
        pg, lite = runs["postgresql"]["pages"][key], runs["sqlite"]["pages"][key]
        met = max(pg["ms"]["p95"], lite["ms"]["p95"]) < PAGE_TARGET_MS
        rows.append([label, report.f1(pg["ms"]["median"]), report.f1(pg["ms"]["p95"]), pg["queries"],
                     report.f1(lite["ms"]["median"]), report.f1(lite["ms"]["p95"]), lite["queries"],
                     f"{pg['bytes'] // 1000} kB", "yes" if met else "**no**"])
    lines.append(md_table(["page", "PG median ms", "PG p95 ms", "PG queries", "SQLite median ms",
                           "SQLite p95 ms", "SQLite queries", "size", "p95 < 100 ms"], rows))
    if result.get("plot"):
        lines += ["", f"![{NAME}]({result['plot']})"]
    return "\n".join(lines)


def plot(result: dict) -> str:
    plt = report.pyplot()
    runs = result["databases"]
    labels = [label for _, label, *_ in PAGES]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    height = 0.38
    for offset, (database, colour) in ((-height / 2, ("postgresql", "#336791")), (height / 2, ("sqlite", "#888"))):
        medians = [runs[database]["pages"][key]["ms"]["median"] for key, *_ in PAGES]
        p95 = [runs[database]["pages"][key]["ms"]["p95"] for key, *_ in PAGES]
        ys = [i + offset for i in range(len(PAGES))]
        ax.barh(ys, medians, height=height, color=colour, label=f"{database} median")
        ax.errorbar(p95, ys, fmt="|", color="black", markersize=8, label="p95" if database == "sqlite" else None)
    ax.axvline(PAGE_TARGET_MS, color="red", linestyle="--", label=f"goal {PAGE_TARGET_MS:.0f} ms")
    ax.set_yticks(range(len(PAGES)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms per request (in-process)")
    ax.set_title(f"List pages, {runs['postgresql']['world']['servers']} servers on 2 nodes, "
                 f"{runs['postgresql']['world']['operations']:,} operations")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = report.save(fig, common.RESULTS_DIR / f"{NAME}.png")
    return path.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="2 x 20 servers, 5 requests per page")
    parser.add_argument("--quick", action="store_true", help="the default: 2 x 500 servers, 30 requests per page")
    parser.add_argument("--full", action="store_true", help="2 x 500 servers, 100 requests per page")
    parser.add_argument("--servers-per-node", type=int)
    parser.add_argument("--reps", type=int)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if os.geteuid() != 0:
        sys.exit("cluster_pages: run as root (scripts/with-postgres runs the cluster as the user postgres)")
    args.servers_per_node = args.servers_per_node or (20 if args.smoke else 500)
    args.reps = args.reps or (5 if args.smoke else 100 if args.full else 30)
    result = {"host": common.host_info(), "reps": args.reps, "goal_ms": PAGE_TARGET_MS, "databases": {}}
    with tempfile.TemporaryDirectory(prefix="vservers-cluster-pages-") as tmp:
        for database in ("sqlite", "postgresql"):
            result["databases"][database] = run_child(args, database, Path(tmp))
    result["plot"] = plot(result)
    text = markdown(result)
    if not args.smoke:
        common.write_results(NAME, result, text)
    report.show({k: v for k, v in result.items() if k != "databases"}
                | {"pages": {db: {key: {"median_ms": round(p["ms"]["median"], 2), "p95_ms": round(p["ms"]["p95"], 2),
                                        "queries": p["queries"]} for key, p in run["pages"].items()}
                             for db, run in result["databases"].items()}}, text)


if __name__ == "__main__":
    main()

"""The panel's list pages for bench/panel.py: which pages, timed in-process with Django's test
client, the tenant's server rows built apart from rendered, and the same pages from a gunicorn on
127.0.0.1."""

from __future__ import annotations

import cProfile
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench import common, procs, profiling
from bench.common import percentile, summary
from bench.panel_world import log

# Stands for the ETag of the page's own last answer in PAGES' headers (see _headers).
ETAG = "<etag>"
# (key, label, user, url name, extra request headers)
PAGES = [
    ("tenant_list", "tenant: server list (own 1/4 of the servers)", "alice", "server_list", {}),
    ("tenant_poll", "tenant: server list, live poll (changed: the page)", "alice", "server_list", {"X-Live": "1"}),
    # The poll again with the ETag of its last answer, nothing changed meanwhile: a 304.
    ("tenant_poll_304", "tenant: server list, live poll, unchanged (If-None-Match → 304)", "alice", "server_list",
     {"X-Live": "1", "If-None-Match": ETAG}),
    ("operator_all", "operator: /servers/ (every tenant's servers)", "operator", "server_list", {}),
    ("operator_servers", "operator: server list (50 per page)", "operator", "op_servers", {}),
    ("operator_operations", "operator: operations list (50 per page)", "operator", "op_operations", {}),
]


# --- page timings -------------------------------------------------------------------------


def _clients(ctx) -> dict:
    from django.test import Client

    clients = {}
    for who, user in (("alice", ctx.alice), ("operator", ctx.operator)):
        client = Client()
        client.force_login(user)
        clients[who] = client
    return clients


def _expected_status(headers: dict) -> int:
    return 304 if "If-None-Match" in headers else 200


def _headers(client, url: str, headers: dict) -> dict:
    """HEADERS with ETAG replaced by the ETag of a plain request's answer (the same user
    and data give the same ETag, whichever client asks)."""
    if headers.get("If-None-Match") != ETAG:
        return headers
    plain = {k: v for k, v in headers.items() if k != "If-None-Match"}
    return {**headers, "If-None-Match": _get(client, url, plain)["ETag"]}


def _get(client, url: str, headers: dict):
    response = client.get(url, headers=headers)
    if response.status_code != _expected_status(headers):
        raise RuntimeError(f"GET {url}: status {response.status_code}")
    return response


def visible_rows(content: bytes) -> int:
    """Table rows of the page (a <thead> holds one)."""
    return content.count(b"<tr") - content.count(b"<thead")


def crowd_rows(content: bytes) -> int:
    return len(set(re.findall(rb"\bs(\d+)\.crowd\.example", content)))


def time_pages(ctx, reps: int, profile_reps: int = 0) -> dict:
    """In-process with django.test.Client (the WSGI handler and every middleware, no network):
    3 warm-up requests, REPS timed ones, one more to count queries; PROFILE_REPS more under
    cProfile when asked."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    clients = _clients(ctx)
    out = {}
    for key, _label, who, name, headers in PAGES:
        client, url = clients[who], reverse(name)
        headers = _headers(client, url, headers)
        for _ in range(3):
            response = _get(client, url, headers)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            _get(client, url, headers)
            times.append((time.perf_counter() - t0) * 1000)
        with CaptureQueriesContext(connection) as captured:
            response = _get(client, url, headers)
        page = {"url": url, "user": who, "ms": summary(times), "samples_ms": [round(t, 3) for t in times],
                "queries": len(captured.captured_queries), "bytes": len(response.content),
                "rows": visible_rows(response.content), "crowd_servers_shown": crowd_rows(response.content)}
        if profile_reps:
            profiler = cProfile.Profile()
            for _ in range(profile_reps):
                profiler.enable()
                _get(client, url, headers)
                profiler.disable()
            page["profile"] = profiling.profile_summary(profiler, profile_reps)
        out[key] = page
        log(f"  {key}: median {page['ms']['median']:.1f} ms, p95 {page['ms']['p95']:.1f} ms, "
            f"{page['queries']} queries, {page['rows']} rows, {page['bytes'] // 1000} kB")
    return out


def rows_split(ctx, reps: int) -> dict | None:
    """The server rows of the tenant's list (alice: a quarter) and of the operator's (every
    server) without a profiler: building them (vservers.views.tenant.server_rows: the query,
    model objects, usage meters) apart from rendering their template (_server_rows.html)."""
    from django.template.loader import render_to_string
    from django.test import RequestFactory

    from vservers.views.tenant import server_rows  # the rows, not rendered
    out = {}
    for who, user in (("alice", ctx.alice), ("operator", ctx.operator)):
        request = RequestFactory().get("/servers/")
        request.user = user
        build, render = [], []
        for _ in range(reps + 2):  # the first two warm up
            t0 = time.perf_counter()
            servers = server_rows(request)
            t1 = time.perf_counter()
            render_to_string("vservers/tenant/_server_rows.html",
                             {"servers": servers, "show_tenant": user.is_staff, "can_request": True}, request=request)
            t2 = time.perf_counter()
            build.append((t1 - t0) * 1000)
            render.append((t2 - t1) * 1000)
        out[who] = {"rows": len(servers), "build_ms": summary(build[2:]), "render_ms": summary(render[2:]),
                    "render_per_row_ms": round(percentile(render[2:], 50) / max(1, len(servers)), 4),
                    "build_per_row_ms": round(percentile(build[2:], 50) / max(1, len(servers)), 4)}
        log(f"  rows of {who}: {len(servers)} rows, build {out[who]['build_ms']['median']:.1f} ms, "
            f"render {out[who]['render_ms']['median']:.1f} ms")
    return out


def time_pages_gunicorn(ctx, reps: int) -> dict:
    """The same pages from gunicorn (1 sync worker) on 127.0.0.1: the client's wall clock and
    gunicorn's own request time (access log %(D)s, microseconds)."""
    from django.conf import settings
    from django.urls import reverse

    clients = _clients(ctx)
    cookies = {who: client.cookies[settings.SESSION_COOKIE_NAME].value for who, client in clients.items()}
    out = {}
    for key, _label, who, name, headers in PAGES:
        url = reverse(name)
        headers = _headers(clients[who], url, headers)
        expected = _expected_status(headers)
        hdrs = {"Host": "127.0.0.1", "Cookie": f"{settings.SESSION_COOKIE_NAME}={cookies[who]}", **headers}
        for _ in range(3):
            local_get(ctx.web_port, url, hdrs)
        offset = ctx.access_log.stat().st_size if ctx.access_log.exists() else 0
        wall = []
        for _ in range(reps):
            t0 = time.perf_counter()
            status, _body = local_get(ctx.web_port, url, hdrs)
            wall.append((time.perf_counter() - t0) * 1000)
            if status != expected:
                raise RuntimeError(f"gunicorn: GET {url}: status {status}")
        server = []
        deadline = time.monotonic() + 5
        while len(server) < reps and time.monotonic() < deadline:
            with open(ctx.access_log, "rb") as fh:
                fh.seek(offset)
                lines = fh.read().decode(errors="replace").splitlines()
            server = [int(parts[2]) / 1000 for parts in (line.split() for line in lines)
                      if len(parts) >= 3 and parts[0] == url and parts[1] == str(expected) and parts[2].isdigit()]
            if len(server) < reps:
                time.sleep(0.05)
        out[key] = {"url": url, "wall_ms": summary(wall), "server_ms": summary(server[-reps:]),
                    "samples_wall_ms": [round(t, 3) for t in wall]}
        log(f"  gunicorn {key}: server median {out[key]['server_ms']['median']:.1f} ms, "
            f"client wall median {out[key]['wall_ms']['median']:.1f} ms")
    return out


def local_get(port: int, path: str, headers: dict) -> tuple[int, bytes]:
    """GET from our own gunicorn on 127.0.0.1 (http.client: no proxy)."""
    return common.http_get("127.0.0.1", port, path, headers, timeout=60)


def start_gunicorn(ctx) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        ctx.web_port = probe.getsockname()[1]
    ctx.access_log = ctx.tmp / "access.log"
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "panel.wsgi:application", "--chdir", str(common.REPO),
           "--bind", f"127.0.0.1:{ctx.web_port}", "--workers", "1",
           "--access-logfile", str(ctx.access_log), "--access-logformat", "%(U)s %(s)s %(D)s %(B)s",
           "--error-logfile", str(ctx.tmp / "gunicorn.log")]
    ctx.web_proc = subprocess.Popen(cmd, cwd=common.REPO, env=ctx.child_env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", ctx.web_port), timeout=1):
                break
        except OSError:
            if ctx.web_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start:\n" + procs.tail(ctx.tmp / "gunicorn.log")) from None
            time.sleep(0.05)

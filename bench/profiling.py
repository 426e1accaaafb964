"""cProfile summaries for the benchmarks: exclusive time per category (waiting, SQLite, Django's
parts, RQ, redis, netlink, the engine, the panel, the rest), the top functions, the cumulative
time of chosen functions; and a wrapper that profiles and times one method."""

from __future__ import annotations

import cProfile
import pstats
import time
from collections import defaultdict

from bench.common import REPO

CATEGORIES = [
    ("waiting (select, sleep, waitpid, pipe and socket reads)", None),
    ("SQLite (C library via sqlite3)", None),
    ("Django ORM (django/db)", "/django/db/"),
    ("Django templates", "/django/template"),
    ("Django URL reversing (django/urls)", "/django/urls/"),
    ("Django utils (escaping, formats, lazy objects)", "/django/utils/"),
    ("Django other (handler, middleware, sessions, auth, forms)", "/django/"),
    ("RQ", "/rq/"),
    ("redis client", "/redis/"),
    ("pyroute2 (netlink)", "/pyroute2/"),
    ("engine (vservers/engine)", "/vservers/engine/"),
    ("panel code (vservers, accounts, panel)", str(REPO)),
    ("other (stdlib, builtins)", ""),
]
WAIT_CALLS = ("select.select", "time.sleep", "posix.waitpid", "recv_into", "'recv'", "poll'", "epoll",
              "method 'acquire'", "'read' of '_io.BufferedReader'", "posix.read")


def categorize(filename: str, func: str) -> str:
    if filename == "~":
        if any(w in func for w in WAIT_CALLS):
            return CATEGORIES[0][0]
        if "sqlite3" in func:
            return CATEGORIES[1][0]
        return CATEGORIES[-1][0]
    for label, needle in CATEGORIES[2:]:
        if needle and needle in filename:
            return label
    return CATEGORIES[-1][0]


def profile_summary(profiler: cProfile.Profile, per: int, top: int = 12, watch=()) -> dict:
    """Exclusive time per category, the top functions by cumulative time and the cumulative
    time of the WATCH functions, in ms per run."""
    stats = pstats.Stats(profiler)
    cats: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():
        cats[categorize(filename, func)] += tt
        total += tt
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        where = filename.replace(str(REPO) + "/", "").split("site-packages/")[-1]
        rows.append({"function": f"{where}:{line}({func})" if filename != "~" else func,
                     "cum_ms": round(ct * 1000 / per, 3), "own_ms": round(tt * 1000 / per, 3),
                     "calls": round(nc / per, 1)})
    rows.sort(key=lambda r: -r["cum_ms"])
    own = sorted(rows, key=lambda r: -r["own_ms"])
    watched = {}
    for label, path, name in watch:
        found = [(ct, nc) for (filename, _line, func), (_cc, nc, _tt, ct, _callers) in stats.stats.items()
                 if func == name and filename.endswith(path)]
        if found:
            watched[label] = {"cum_ms": round(sum(ct for ct, _ in found) * 1000 / per, 3),
                              "calls": round(sum(nc for _, nc in found) / per, 2)}
    return {
        "runs": per,
        "total_ms": round(total * 1000 / per, 3),
        "watched": watched,
        "categories_ms": {k: round(v * 1000 / per, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "top_cumulative": rows[:top],
        "top_own": own[:top],
    }


def profiled(method, profiler: cProfile.Profile | None, spent: list[float]):
    """METHOD run under PROFILER (if any); its wall time appended to SPENT (ms)."""

    def run(*args, **kwargs):
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        try:
            return method(*args, **kwargs)
        finally:
            if profiler is not None:
                profiler.disable()
            spent.append((time.perf_counter() - t0) * 1000)

    return run

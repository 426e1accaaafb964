"""`vserver`: the engine's command line. One small function per verb: parse, call the
library, print.

It starts lean (issue 17): building the parser imports argparse and nothing of the engine but
its errors, and each verb imports what it uses (validate, the Engine, pyroute2 through
network) when it runs. tests/engine/test_cli_startup.py holds `--help` and `list` to a module
budget."""

from __future__ import annotations

import argparse
import functools
import gettext
import os
import sys

from .errors import EngineError, InvalidInput, NotFound

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~3 ms)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn


def _engine():
    from .lifecycle import Engine

    return Engine()


def _print_json(data) -> None:
    import json

    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}M"


# -- verbs ----------------------------------------------------------------------------------


def cmd_doctor(args) -> int:
    from .config import EngineConfig
    from .doctor import run_checks

    checks = run_checks(EngineConfig.from_env())
    for check in checks:
        mark = "ok     " if check.ok else ("MISSING" if check.required else "warning")
        line = f"{mark} {check.name}: {check.detail}"
        if not check.ok and check.fix:
            line += f"  (fix: {check.fix})"
        print(line)
    return 1 if any(not c.ok and c.required for c in checks) else 0


def cmd_serve(args) -> int:
    """The resident server (resident.py) of the state root, in the foreground until SIGTERM."""
    from . import resident
    from .state import root_from_env

    root = root_from_env()

    def ready() -> None:
        print(f"vserver serve: the commands of {root} go through {resident.socket_path(root)}", flush=True)

    return resident.serve(root, ready)


def cmd_template_build(args) -> int:
    from . import templates, validate
    from .config import EngineConfig

    info = templates.build(EngineConfig.from_env(), validate.template_name(args.name))
    print(f"built template {info.name} version {info.version} ({_mb(info.size_bytes)})")
    return 0


def cmd_template_list(args) -> int:
    from . import templates
    from .config import EngineConfig

    rows = [{**info.to_json(), "current": current} for info, current in templates.list_all(EngineConfig.from_env())]
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'NAME':<10} {'VERSION':<24} {'CURRENT':<8} {'SIZE':>8}")
    for row in rows:
        print(f"{row['name']:<10} {row['version']:<24} {'*' if row['current'] else '':<8} {_mb(row['size_bytes']):>8}")
    return 0


def _limits_given(args) -> dict[str, Any]:
    """The limits typed as --cpus, --memory, --pids and --disk, validated; create and update
    share the parsing and the bounds."""
    from . import validate
    from .spec import MAX_DISK_BYTES, MIN_DISK_BYTES, MIN_MEMORY_BYTES

    given: dict[str, Any] = {}
    if args.cpus is not None:
        given["cpus"] = validate.cpus(args.cpus)
    if args.memory is not None:
        given["memory_bytes"] = validate.size(args.memory, minimum=MIN_MEMORY_BYTES)
    if args.pids is not None:
        given["pids"] = validate.pids(args.pids)
    if args.disk is not None:
        given["disk_bytes"] = validate.size(args.disk, minimum=MIN_DISK_BYTES, maximum=MAX_DISK_BYTES)
    if args.network_admin is not None:
        given["network_admin"] = args.network_admin
    if args.io_weight is not None:
        given["io_weight"] = validate.io_weight(args.io_weight)
    for field, check in (("io_read_bps", validate.io_bps), ("io_write_bps", validate.io_bps),
                         ("io_read_iops", validate.io_iops), ("io_write_iops", validate.io_iops)):
        value = getattr(args, field)
        if value is not None:
            # "max" lifts a ceiling (update keeps every option not given).
            given[field] = None if value.strip().lower() == "max" else check(value)
    return given


def _io_text(lim) -> str:
    def rate(value: int | None) -> str:
        return "-" if value is None else f"{value / 2**20:.1f}M/s"

    def ops(value: int | None) -> str:
        return "-" if value is None else f"{value}/s"

    return (f"weight={lim.io_weight or '-'} read={rate(lim.io_read_bps)} write={rate(lim.io_write_bps)} "
            f"read-ops={ops(lim.io_read_iops)} write-ops={ops(lim.io_write_iops)}")


def cmd_create(args) -> int:
    from . import validate
    from .spec import Limits

    limits = Limits(**_limits_given(args))
    spec = _engine().create(
        validate.server_name(args.name),
        validate.template_name(args.template),
        [validate.guest_address(a) for a in args.ip],
        limits,
        hostname=validate.hostname(args.hostname) if args.hostname else None,
        autostart=args.autostart,
    )
    print(f"created {spec.name} ({', '.join(spec.addresses)}; uid range {spec.uid_base}+65536)")
    return 0


def cmd_update(args) -> int:
    import dataclasses

    from . import validate

    name = validate.server_name(args.name)
    given = _limits_given(args)
    if not given:
        raise InvalidInput("update needs at least one of --cpus, --memory, --pids, --disk, --io-weight, "
                           "--io-read-bps, --io-write-bps, --io-read-iops, --io-write-iops, --[no-]network-admin")
    engine = _engine()
    # Omitted options keep their value: the engine takes the whole new set.
    status = engine.update(name, dataclasses.replace(engine.spec(name).limits, **given))
    lim = status.limits
    print(f"updated {name}: cpus={lim.cpus or '-'} memory={_mb(lim.memory_bytes)} pids={lim.pids or '-'} "
          f"disk={_mb(lim.disk_bytes)}")
    if "network_admin" in given:
        print(f"network admin inside: {'on' if lim.network_admin else 'off'} from the next start of {name}")
    print(f"disk io: {_io_text(lim)}")
    if status.extra.get("disk_grow_pending"):
        print(f"the disk of {name} grows at its next start: this host does not let the engine resize "
              "a mounted filesystem (CAP_SYS_RESOURCE)")
    return 0


def _each(names: Sequence[str], action: Callable[[str], object], verb: str) -> int:
    """Run ACTION for every name; report each failure and carry on with the others."""
    from . import validate
    for name in names:
        validate.server_name(name)
    failed = 0
    for name in names:
        try:
            action(name)
            print(f"{verb} {name}")
        except EngineError as exc:
            failed += 1
            print(f"vserver: {name}: {exc}", file=sys.stderr)
    return 1 if failed else 0


def cmd_start(args) -> int:
    engine = _engine()
    if len(set(args.names)) < 2:
        return _each(args.names, engine.start, "started")
    from . import validate
    names = [validate.server_name(n) for n in args.names]
    return _report(engine.start_many(names), "started")  # their starts overlap (Engine.start_many)


def _report(results: dict, verb: str) -> int:
    for name, error in results.items():
        if error is None:
            print(f"{verb} {name}")
        else:
            print(f"vserver: {name}: {error}", file=sys.stderr)
    return 1 if any(results.values()) else 0


def cmd_stop(args) -> int:
    from . import validate
    names = [validate.server_name(n) for n in args.names]
    # --kill: what is left after a timeout of 0, at once (lxc-stop -k's stop).
    timeout = 0.0 if args.kill else args.timeout
    return _report(_engine().stop_many(names, timeout=timeout), "killed" if args.kill else "stopped")


def cmd_restart(args) -> int:
    engine = _engine()
    return _each(args.names, lambda n: engine.restart(n, timeout=args.timeout), "restarted")


def cmd_delete(args) -> int:
    from . import validate
    names = [validate.server_name(n) for n in args.names]
    return _report(_engine().delete_many(names), "deleted")


def cmd_reinstall(args) -> int:
    from . import validate
    name = validate.server_name(args.name)
    if not args.yes:
        raise InvalidInput(f"reinstall wipes every file of {name!r}; add --yes to go ahead")
    status = _engine().reinstall(name, args.template)
    print(f"reinstalled {name} from {status.template}")
    return 0


def cmd_rescue(args) -> int:
    from . import validate
    name = validate.server_name(args.name)
    engine = _engine()
    if args.leave:
        engine.rescue_leave(name)
        print(f"{name} left rescue and runs its own system")
    else:
        engine.rescue_start(name)
        print(f"{name} runs the rescue system; its own files are at /mnt")
    return 0


def cmd_status(args) -> int:
    from . import validate
    status = _engine().status(validate.server_name(args.name))
    if args.json:
        _print_json(status.to_json())
        return 0
    u, lim = status.usage, status.limits
    print(f"name:     {status.name}")
    print(f"state:    {status.state}" + (f" (init pid {status.init_pid})" if status.init_pid else "")
          + (", rescue system (own files at /mnt)" if status.rescue else ""))
    print(f"hostname: {status.hostname}")
    print(f"template: {status.template}")
    print(f"ips:      {', '.join(status.ips) or '-'}")
    print(f"uids:     {status.uid_base}..{status.uid_base + 65535}")
    pending = " (grows at the next start)" if status.extra.get("disk_grow_pending") else ""
    print(f"limits:   cpus={lim.cpus or '-'} memory={_mb(lim.memory_bytes)} pids={lim.pids or '-'} "
          f"disk={_mb(lim.disk_bytes)}{pending}")
    print(f"disk io:  {_io_text(lim)}")
    print(f"usage:    cpu={u.cpu_seconds:.2f}s memory={_mb(u.memory_bytes)} pids={u.pids} "
          f"disk={_mb(u.disk_used_bytes)}")
    return 0


def cmd_list(args) -> int:
    if args.json:
        _print_json([s.to_json() for s in _engine().list()])
        return 0
    # A stopped server's row comes from its files (listing.py: without the engine's machinery,
    # half of the run's time); a running one's from the Engine, which asks the kernel.
    from . import listing
    from .state import root_from_env

    root = root_from_env()
    engine = None
    print(f"{'NAME':<20} {'STATE':<8} {'PID':>7} {'MEMORY':>8} {'PIDS':>5} {'DISK':>8}  IPS")
    for name, config, init_pid in listing.servers(root):
        if init_pid is None:
            _list_row(name, "stopped", None, 0, 0, listing.disk_used(root, name), config["addresses"])
            continue
        engine = engine or _engine()
        try:
            s = engine.status(name)
        except NotFound:
            continue  # deleted by another process meanwhile
        _list_row(s.name, "rescue" if s.rescue else s.state, s.init_pid, s.usage.memory_bytes, s.usage.pids,
                  s.usage.disk_used_bytes, s.ips)
    return 0


def _list_row(name: str, state: str, init_pid: int | None, memory: int, pids: int, disk: int,
              ips: Sequence[str]) -> None:
    print(f"{name:<20} {state:<8} {init_pid or '-':>7} {_mb(memory):>8} {pids:>5} {_mb(disk):>8}  {', '.join(ips)}")


def cmd_exec(args) -> int:
    from . import validate
    from .console import exec_forwarding

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise EngineError("no command given (vserver exec NAME -- CMD [ARG...])")
    engine = _engine()
    name = validate.server_name(args.name)
    return exec_forwarding(engine.init_pid(name), command, engine.cgroup_procs(name))


def cmd_enter(args) -> int:
    from . import validate
    from .console import interactive

    engine = _engine()
    name = validate.server_name(args.name)
    return interactive(engine.init_pid(name), engine.cgroup_procs(name), account=args.user)


def _read_password(prompt: str) -> str:
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\n")


def cmd_account(args) -> int:
    from . import validate
    from .guest import listing

    accounts = _engine().accounts(validate.server_name(args.name))
    if args.action == "list":
        rows = listing(accounts)
        if args.json:
            _print_json([a.to_json() for a in rows])
        else:
            print(f"{'USER':<20} {'UID':>6} {'HOME':<24} SHELL")
            for a in rows:
                print(f"{a.name:<20} {a.uid:>6} {a.home:<24} {a.shell}")
        return 0
    if not args.user:
        raise EngineError(f"account {args.action} needs a USER")
    if args.action == "add":
        password = _read_password("Password: ") if args.password_stdin else None
        account = accounts.add(args.user, password=password, ssh_key=args.ssh_key)
        print(f"added {account.name} (uid {account.uid})")
    elif args.action == "delete":
        accounts.delete(args.user)
        print(f"deleted {args.user}")
    elif args.action == "passwd" and args.user == "root":
        # Also in rescue mode, where it is the password of the system at /mnt.
        _engine().set_root_password(validate.server_name(args.name), _read_password("New password: "))
        print("password of root changed")
    elif args.action == "passwd":
        accounts.set_password(args.user, _read_password("New password: "))
        print(f"password of {args.user} changed")
    elif args.action == "addkey":
        if not args.ssh_key:
            raise EngineError("account addkey needs --ssh-key KEY")
        accounts.add_ssh_key(args.user, args.ssh_key)
        print(f"key added for {args.user}")
    return 0


def cmd_service(args) -> int:
    from . import validate
    from .guest import listing

    services = _engine().services(validate.server_name(args.name))
    if args.action == "list":
        rows = listing(services)
        if args.json:
            _print_json([s.to_json() for s in rows])
        else:
            print(f"{'SERVICE':<20} {'STATE':<9} {'PID':>7} {'UPTIME':>8}")
            for s in rows:
                print(f"{s.name:<20} {s.state:<9} {s.pid or '-':>7} {s.seconds if s.seconds is not None else '-':>7}s")
        return 0
    if not args.service:
        raise EngineError(f"service {args.action} needs a SERVICE")
    service = services.control(args.service, args.action)
    print(f"{service.name}: {service.state}")
    return 0


def cmd_snapshot(args) -> int:
    from . import validate
    name = validate.server_name(args.name)
    if args.action != "list" and args.snap is not None:
        validate.user_snapshot_name(args.snap)
    engine = _engine()
    if args.action == "create":
        info = engine.snapshot_create(name, args.snap)
        if args.json:
            _print_json(info.to_json())
        else:
            frozen = "not running" if info.freeze_seconds is None else f"frozen {info.freeze_seconds * 1000:.0f} ms"
            print(f"{name}: snapshot {info.name} taken ({_mb(info.size_bytes)} on disk, "
                  f"copy {info.copy_seconds * 1000:.0f} ms, {frozen})")
        return 0
    if args.action == "list":
        infos = engine.snapshot_list(name)
        if args.json:
            _print_json([info.to_json() for info in infos])
        else:
            import time

            print(f"{'SNAPSHOT':<34} {'CREATED (UTC)':<20} {'SIZE':>8} {'FROZEN':>8}  TEMPLATE")
            for info in infos:
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.created))
                frozen = "-" if info.freeze_seconds is None else f"{info.freeze_seconds * 1000:.0f}ms"
                print(f"{info.name:<34} {created:<20} {_mb(info.size_bytes):>8} {frozen:>8}  "
                      f"{info.template}:{info.template_version}")
        return 0
    if args.snap is None:
        raise InvalidInput(f"snapshot {args.action} needs a SNAP")
    if args.action == "restore":
        status = engine.snapshot_restore(name, args.snap)
        print(f"{name}: snapshot {args.snap} restored, {status.state}")
    else:
        engine.snapshot_delete(name, args.snap)
        print(f"{name}: snapshot {args.snap} deleted")
    return 0


# -- parser ---------------------------------------------------------------------------------


def _columns() -> int:
    """The width shutil.get_terminal_size() would give: $COLUMNS, else the terminal's, else 80.
    Here because argparse's HelpFormatter imports shutil for it (with bz2, lzma and fnmatch,
    ~2 ms), and every parser makes a formatter, even one that never prints help."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)  # - 2: as HelpFormatter does with shutil's width


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get one line, like every other bad input, and exit status 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)  # sub-parsers do not inherit it
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_io_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--io-weight", help="share of disk time against other servers, 1-10000 (100 is even)")
    parser.add_argument("--io-read-bps", help="disk reads per second in bytes, e.g. 20M; max: no limit")
    parser.add_argument("--io-write-bps", help="disk writes per second in bytes, e.g. 10M; max: no limit")
    parser.add_argument("--io-read-iops", help="disk read operations per second, e.g. 500; max: no limit")
    parser.add_argument("--io-write-iops", help="disk write operations per second, e.g. 200; max: no limit")


# Every verb with its line in `vserver --help`, in that order. A run builds the parser of the verb
# typed alone, and `--help` (or a mistyped verb) the verbs' names and lines without their
# arguments: each sub-parser costs gettext look-ups and a formatter, each argument a formatter;
# all of them with their arguments took a third of `vserver --help` (48 of 122 M instructions,
# valgrind --tool=callgrind, 2026-12-07).
VERBS = {
    "doctor": "check the kernel features the engine needs",
    "template": "build and list templates",
    "create": "create a stopped server",
    "start": "start servers",
    "stop": "stop servers (init shuts down, the rest is killed after --timeout)",
    "restart": "stop and start servers",
    "delete": "stop and delete servers with their disks",
    "reinstall": "rebuild a server from a template, wiping its files",
    "rescue": "start a server from the rescue system, its own files at /mnt",
    "update": "change a server's limits (running: at once); disks only grow",
    "status": "state, limits, addresses and usage of a server",
    "list": "all servers",
    "exec": "run a command inside a server",
    "enter": "interactive shell inside a server",
    "account": "accounts inside a server",
    "service": "services inside a server",
    "snapshot": "take, list, restore and delete a server's snapshots",
    "backup": "back up servers and restore them (VSERVER_BACKUP_DIR)",
    "migrate": "move a stopped server to another node (rsync over SSH)",
    "serve": "stay resident with the engine loaded, and run the next commands without a fresh start",
}


def _keep_argparse_phrases() -> None:
    """argparse asks gettext for each of its phrases anew ("usage: ", "show this help message
    and exit", ...), and gettext looks for a message catalogue on disk at every ask (gettext.find:
    about 0.12 ms each here): `vserver --help` asked 44 times for 4 phrases, ~5 ms of its run.
    The answers cannot change within a run, so each is kept after the first."""
    if not hasattr(argparse._, "cache_info"):  # type: ignore[attr-defined]
        argparse._ = functools.lru_cache(maxsize=128)(gettext.gettext)  # type: ignore[attr-defined]
        argparse.ngettext = functools.lru_cache(maxsize=128)(gettext.ngettext)  # type: ignore[attr-defined]


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """With VERB (one of VERBS), the top level and that verb with its arguments alone; without,
    the top level listing every verb (for --help and the error of a mistyped verb)."""
    _keep_argparse_phrases()
    parser = _Parser(prog="vserver", description="OS-level virtual private servers")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    for name, helptext in VERBS.items():
        if verb is None:
            verbs.add_parser(name, help=helptext, add_help=False)
            continue
        if name != verb:
            continue
        sub = verbs.add_parser(name, help=helptext)
        if name == "doctor":
            sub.set_defaults(func=cmd_doctor)
        elif name == "serve":
            sub.set_defaults(func=cmd_serve)
        elif name in _PLAIN:
            func, with_timeout = _PLAIN[name]
            sub.add_argument("names", nargs="+", metavar="NAME")
            if with_timeout:
                sub.add_argument("--timeout", type=float, default=10.0)
            if name == "stop":
                sub.add_argument("--kill", action="store_true",
                                 help="kill everything at once, without a clean shutdown (--timeout 0)")
            sub.set_defaults(func=func)
        elif name == "backup":
            from .cli_backup import add_verbs as add_backup_verbs

            add_backup_verbs(sub, _Parser)
        elif name == "migrate":
            from .cli_migrate import add_verbs as add_migrate_verbs

            add_migrate_verbs(sub, _Parser)
        else:
            _ADD[name](sub)
    return parser


def _add_template(template: argparse.ArgumentParser) -> None:
    tverbs = template.add_subparsers(dest="template_verb", required=True, parser_class=_Parser)
    build = tverbs.add_parser("build", help="build a new version of a template")
    build.add_argument("name", choices=["busybox", "debian"])
    build.set_defaults(func=cmd_template_build)
    tlist = tverbs.add_parser("list", help="list templates")
    tlist.add_argument("--json", action="store_true")
    tlist.set_defaults(func=cmd_template_list)


def _add_create(create: argparse.ArgumentParser) -> None:
    create.add_argument("name")
    create.add_argument("--template", required=True)
    create.add_argument("--ip", action="append", required=True, help="ADDRESS/PREFIX, repeatable")
    create.add_argument("--cpus", help="share of cores, e.g. 0.5")
    create.add_argument("--memory", help="memory limit, e.g. 64M")
    create.add_argument("--disk", default="256M", help="disk size, e.g. 256M (default)")
    create.add_argument("--pids", help="process limit, e.g. 128")
    create.add_argument("--network-admin", action=argparse.BooleanOptionalAction, default=None,
                        help="root inside may change its own network (keeps CAP_NET_ADMIN); off by default")
    _add_io_options(create)
    create.add_argument("--hostname")
    create.add_argument("--autostart", action="store_true")
    create.set_defaults(func=cmd_create)


def _add_reinstall(reinstall: argparse.ArgumentParser) -> None:
    reinstall.add_argument("name")
    reinstall.add_argument("--template", help="the template to use (default: the server's own), its current version")
    reinstall.add_argument("--yes", action="store_true", help="confirm: every file of the server is lost")
    reinstall.set_defaults(func=cmd_reinstall)


def _add_rescue(rescue: argparse.ArgumentParser) -> None:
    rescue.add_argument("name")
    rescue.add_argument("--leave", action="store_true", help="leave rescue: start its own system again")
    rescue.set_defaults(func=cmd_rescue)


def _add_update(update: argparse.ArgumentParser) -> None:
    update.add_argument("name")
    update.add_argument("--cpus", help="share of cores, e.g. 0.5")
    update.add_argument("--memory", help="memory limit, e.g. 64M")
    update.add_argument("--pids", help="process limit, e.g. 128")
    update.add_argument("--disk", help="disk size, e.g. 512M (no smaller than now)")
    update.add_argument("--network-admin", action=argparse.BooleanOptionalAction, default=None,
                        help="root inside may change its own network (from the next start)")
    _add_io_options(update)
    update.set_defaults(func=cmd_update)


def _add_status(status: argparse.ArgumentParser) -> None:
    status.add_argument("name")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)


def _add_list(lst: argparse.ArgumentParser) -> None:
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)


def _add_exec(exe: argparse.ArgumentParser) -> None:
    exe.add_argument("name")
    exe.add_argument("command", nargs=argparse.REMAINDER)
    exe.set_defaults(func=cmd_exec)


def _add_enter(enter: argparse.ArgumentParser) -> None:
    enter.add_argument("name")
    enter.add_argument("--user", default="root", help="the guest account to log in as (default root)")
    enter.set_defaults(func=cmd_enter)


def _add_account(account: argparse.ArgumentParser) -> None:
    account.add_argument("action", choices=["add", "delete", "list", "passwd", "addkey"])
    account.add_argument("name")
    account.add_argument("user", nargs="?")
    account.add_argument("--ssh-key", help="an OpenSSH public key line")
    account.add_argument("--password-stdin", action="store_true", help="add: read a password from stdin")
    account.add_argument("--json", action="store_true")
    account.set_defaults(func=cmd_account)


def _add_service(service: argparse.ArgumentParser) -> None:
    service.add_argument("action", choices=["list", "start", "stop", "restart"])
    service.add_argument("name")
    service.add_argument("service", nargs="?")
    service.add_argument("--json", action="store_true")
    service.set_defaults(func=cmd_service)


def _add_snapshot(snapshot: argparse.ArgumentParser) -> None:
    snapshot.add_argument("action", choices=["create", "list", "restore", "delete"])
    snapshot.add_argument("name")
    snapshot.add_argument("snap", nargs="?", metavar="SNAP", help="the snapshot's name (create: optional)")
    snapshot.add_argument("--json", action="store_true")
    snapshot.set_defaults(func=cmd_snapshot)


# The verbs that take server names (and stop and restart a --timeout), and the others' builders.
_PLAIN = {"start": (cmd_start, False), "stop": (cmd_stop, True), "restart": (cmd_restart, True),
          "delete": (cmd_delete, False)}
_ADD = {"template": _add_template, "create": _add_create, "reinstall": _add_reinstall, "rescue": _add_rescue,
        "update": _add_update, "status": _add_status, "list": _add_list, "exec": _add_exec, "enter": _add_enter,
        "account": _add_account, "service": _add_service, "snapshot": _add_snapshot}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # A known verb first: its arguments alone (VERBS). Anything else (--help, a typo) needs none.
    parser = build_parser(argv[0] if argv and argv[0] in VERBS else None)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EngineError as exc:
        print(f"vserver: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`vserver list | head -1`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the last flush does not fail
        return 1


def outcome(argv: Sequence[str]) -> int:
    """The exit status of `vserver ARGV` run in this process (argparse's exits included)."""
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's --help and usage errors
        if not isinstance(exc.code, int | None):
            raise
        return exc.code or 0


def run() -> NoReturn:
    """`vserver` in this process (command.run's way when no resident server takes the command):
    main, then out at once. Python's finalization, which tears down every imported module
    after the last output, took a run 4-11 ms (strace -tt, last write to exit_group) and does
    nothing a run needs: the output is flushed here, files are closed by their `with`, locks
    are flocks the kernel drops, and every child process and thread has been waited for. An
    unexpected exception still takes the usual way out (its traceback, status 1), and so does
    a run under a profiler or a tracer (cProfile, coverage), which writes its data on the way."""
    code = outcome(sys.argv[1:])
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = code or 1
    os._exit(code)


if __name__ == "__main__":
    run()

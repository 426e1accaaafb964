"""`vserver backup create|list|verify|restore|delete|push`: the backup verbs of the CLI (kept
apart from cli.py so that each part of the engine adds its verbs in one line there)."""

from __future__ import annotations

import argparse
import sys

# validate and json are imported by the verbs that use them: building the parser (every
# `vserver` run, --help too) stays lean.


def _engine():
    from .lifecycle import Engine

    return Engine()


def _mb(value: int) -> str:
    return f"{value / 2**20:.1f}M"


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{done * 100 // max(total, 1):3d}%", end="", file=sys.stderr, flush=True)


def _when(epoch: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_create(args) -> int:
    from . import validate

    info = _engine().backup_create(validate.server_name(args.name), progress=_progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"{info.name} ({_mb(info.size_bytes)}, {info.manifest['files']} files, "
          f"{_mb(info.manifest['bytes'])} unpacked)")
    return 0


def cmd_list(args) -> int:
    infos = _engine().backup_list(args.name)
    if args.json:
        import json

        json.dump([i.to_json() for i in infos], sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    print(f"{'BACKUP':<52} {'SERVER':<20} {'CREATED':<21} {'SIZE':>8}")
    for info in infos:
        print(f"{info.name:<52} {info.server:<20} {_when(info.created):<21} {_mb(info.size_bytes):>8}")
    return 0


def cmd_verify(args) -> int:
    info = _engine().backup_verify(args.archive)
    print(f"{info.name}: intact ({info.manifest['files']} files, sha256 {info.sha256})")
    return 0


def cmd_restore(args) -> int:
    from . import validate

    status = _engine().backup_restore(args.archive, validate.server_name(args.name), progress=_progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"{status.name}: restored from {args.archive}, {status.state}")
    return 0


def cmd_delete(args) -> int:
    engine = _engine()
    for archive in args.archives:
        engine.backup_delete(archive)
    return 0


def cmd_push(args) -> int:
    _engine().backup_push(args.archive, args.destination)
    print(f"{args.archive}: copied to {args.destination}")
    return 0


def add_verbs(backup: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]) -> None:
    """The verbs under `vserver backup` (its line in `vserver --help` is cli.VERBS')."""
    bverbs = backup.add_subparsers(dest="backup_verb", required=True, metavar="VERB", parser_class=parser_class)
    create = bverbs.add_parser("create", help="archive a server's own files (stopped, or through a snapshot)")
    create.add_argument("name")
    create.set_defaults(func=cmd_create)
    lst = bverbs.add_parser("list", help="backups, newest first")
    lst.add_argument("name", nargs="?", help="only this server's")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    verify = bverbs.add_parser("verify", help="check an archive in full (checksum, every member)")
    verify.add_argument("archive")
    verify.set_defaults(func=cmd_verify)
    restore = bverbs.add_parser("restore", help="replace an existing server's files by an archive's, and start it")
    restore.add_argument("archive")
    restore.add_argument("name")
    restore.set_defaults(func=cmd_restore)
    delete = bverbs.add_parser("delete", help="remove backups (a missing one is no error)")
    delete.add_argument("archives", nargs="+", metavar="ARCHIVE")
    delete.set_defaults(func=cmd_delete)
    push = bverbs.add_parser("push", help="copy a backup to a second destination (rsync, over SSH if remote)")
    push.add_argument("archive")
    push.add_argument("destination", help="USER@HOST:/PATH, or a local /PATH (e.g. an NFS mount)")
    push.set_defaults(func=cmd_push)

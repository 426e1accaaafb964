"""`vserver migrate send|receive|discard|key`: moving a stopped server to another node (kept
apart from cli.py, as the backup verbs are)."""

from __future__ import annotations

import argparse
import sys

from .errors import InvalidInput

# Compiled by parse_target, not at import: building the parser (every `vserver` run) stays lean.
_TO = (r"(?P<user>[a-z_][a-z0-9_-]{0,31})@(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])"
       r"(?::(?P<port>\d{1,5}))?:(?P<root>/[A-Za-z0-9._/-]*)")


def _engine():
    from .lifecycle import Engine

    return Engine()


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{done * 100 // max(total, 1):3d}%", end="", file=sys.stderr, flush=True)


def parse_target(text: str, host_key: str, identity: str | None, config):
    """USER@HOST[:PORT]:ROOT (an IPv6 address in brackets) as a checked MigrationTarget."""
    import re
    from pathlib import Path

    from . import migrate

    match = re.fullmatch(_TO, text or "")
    if match is None:
        raise InvalidInput(f"invalid target {text!r}: use USER@HOST[:PORT]:ROOT, e.g. root@node-b:/var/lib/vservers")
    key = Path(identity) if identity else config.root / migrate.KEY_DIR / migrate.KEY_NAME
    return migrate.MigrationTarget(
        host=match["host"].strip("[]"), port=int(match["port"] or 22), root=Path(match["root"]),
        identity_file=key, known_host_key=host_key, user=match["user"],
    ).checked()


def cmd_send(args) -> int:
    from . import validate

    engine = _engine()
    target = parse_target(args.to, args.host_key, args.identity, engine.config)
    result = engine.migrate_send(validate.server_name(args.name), target, ship_template=args.template,
                                 progress=_progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"{args.name}: shipped {result.bytes_total / 2**20:.1f}M to {target} in {result.seconds:.1f} s")
    return 0


def cmd_receive(args) -> int:
    from . import validate

    spec = _engine().migrate_receive(validate.server_name(args.name), addresses=args.ip or None)
    print(f"{spec.name}: received ({', '.join(spec.addresses)}, uid base {spec.uid_base}), stopped")
    return 0


def cmd_discard(args) -> int:
    from . import validate

    _engine().migrate_discard(validate.server_name(args.name))
    return 0


def cmd_key(args) -> int:
    from . import migrate
    from .config import EngineConfig

    _, public = migrate.ensure_node_key(EngineConfig.from_env())
    print(public)
    return 0


def add_verbs(migrate: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]) -> None:
    """The verbs under `vserver migrate` (its line in `vserver --help` is cli.VERBS')."""
    mverbs = migrate.add_subparsers(dest="migrate_verb", required=True, metavar="VERB", parser_class=parser_class)
    send = mverbs.add_parser("send", help="ship a stopped server into another node's incoming/")
    send.add_argument("name")
    send.add_argument("--to", required=True, metavar="USER@HOST[:PORT]:ROOT")
    send.add_argument("--host-key", required=True, metavar="'ssh-ed25519 AAAA...'",
                      help="the target's host key (checked strictly)")
    send.add_argument("-i", dest="identity", metavar="KEY", help="private key (default: this node's)")
    send.add_argument("--template", action="store_true", help="ship the server's template version too")
    send.set_defaults(func=cmd_send)
    receive = mverbs.add_parser("receive", help="adopt a shipped server here (stopped)")
    receive.add_argument("name")
    receive.add_argument("--ip", action="append", metavar="ADDR", help="new address (repeat); default its own")
    receive.set_defaults(func=cmd_receive)
    discard = mverbs.add_parser("discard", help="remove a shipped server's files from incoming/")
    discard.add_argument("name")
    discard.set_defaults(func=cmd_discard)
    key = mverbs.add_parser("key", help="print this node's migration public key (made if needed)")
    key.set_defaults(func=cmd_key)

"""The console broker (consoles/broker.py) as the node runs it, a real `manage.py consolebroker`
process, against real busybox servers, spoken to over its socket as the web side does."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from consoles import broker as messages
from tests.consoles.conftest import PATIENCE, ConsoleClient, issue_ticket
from tests.panel.faults import wait_until


def server_processes(engine, server) -> dict[int, str]:
    """The processes in the server's cgroup: pid -> command line."""
    procs = engine.cgroup_procs(server.engine_name)
    found = {}
    for pid in map(int, Path(procs[0]).read_text().split()):
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            pass
    return found


def sleepers(engine, server) -> list[int]:
    return [pid for pid, cmd in server_processes(engine, server).items() if cmd.startswith("sleep 1000")]


def audit(action: str, **filters):
    from accounts.models import AuditEntry

    return list(AuditEntry.objects.filter(action=action, **filters).order_by("created"))


def session_of(ticket: str):
    from consoles.models import ConsoleSession, ticket_hash

    return ConsoleSession.objects.get(ticket_hash=ticket_hash(ticket))


def ended(ticket: str):
    """The session row once the broker has recorded its end."""
    return wait_until(lambda: (s := session_of(ticket)).ended is not None and s, f"the end of {ticket[:6]}'s session",
                      timeout=PATIENCE)


def test_a_console_shows_the_servers_hostname_and_its_ticket_opens_only_once(fault_world, provision, open_console):
    server = provision("web")
    before = server_processes(fault_world.engine, server)
    ticket = issue_ticket(fault_world.alice, server)
    client, answer = open_console(ticket, fault_world.alice.pk, cols=100, rows=30)
    assert answer == {"ok": True}
    assert session_of(ticket).started is not None
    client.type("hostname; stty size\n")
    client.read_until(b"30 100")
    assert f"\r\n{server.hostname}\r\n".encode() in client.shown
    client.resize(120, 40)
    client.type("stty size\n")
    client.read_until(b"40 120")
    client.close()  # the web side closes: the session ends
    session = ended(ticket)
    assert session.end_reason == messages.WEB_CLOSED
    opened = audit("console.opened")
    closed = audit("console.closed")
    assert len(opened) == len(closed) == 1
    assert opened[0].actor == fault_world.alice and opened[0].tenant == fault_world.acme
    assert closed[0].details["account"] == "root" and closed[0].details["reason"] == messages.WEB_CLOSED
    assert closed[0].details["seconds"] >= 0
    wait_until(lambda: set(server_processes(fault_world.engine, server)) <= set(before), "the session to be gone")

    # The same ticket again: refused, audited, nothing started in the server.
    client, answer = open_console(ticket, fault_world.alice.pk)
    assert answer == {"ok": False, "error": messages.EXPIRED}
    refused = audit("console.refused")
    assert len(refused) == 1 and refused[0].actor == fault_world.alice and refused[0].tenant == fault_world.acme
    assert set(server_processes(fault_world.engine, server)) <= set(before)
    assert len(audit("console.opened")) == 1


def test_tickets_of_others_expired_ones_and_users_without_the_right_are_refused(
        fault_world, provision, open_console, django_user_model):
    from accounts.models import Membership

    web, other = provision("web", "db")
    other.tenant = fault_world.globex  # another tenant's server, on this node
    other.save(update_fields=["tenant"])
    before = {s.pk: set(server_processes(fault_world.engine, s)) for s in (web, other)}
    reader = django_user_model.objects.create_user("reader")
    Membership.objects.create(user=reader, tenant=fault_world.acme, role=Membership.READONLY)

    # Alice's ticket presented for Bob: refused, and not spent.
    alices = issue_ticket(fault_world.alice, web)
    _, answer = open_console(alices, fault_world.bob.pk)
    assert answer == {"ok": False, "error": messages.EXPIRED}
    assert session_of(alices).started is None
    # An expired ticket.
    expired = issue_ticket(fault_world.alice, web, seconds=-1)
    _, answer = open_console(expired, fault_world.alice.pk)
    assert answer == {"ok": False, "error": messages.EXPIRED}
    # A ticket the database never had.
    _, answer = open_console("made-up", fault_world.alice.pk)
    assert answer == {"ok": False, "error": messages.EXPIRED}
    # A read-only member's ticket (the web side would not issue one: the broker checks again).
    readers = issue_ticket(reader, web)
    _, answer = open_console(readers, reader.pk)
    assert answer == {"ok": False, "error": messages.NOT_ALLOWED}
    assert session_of(readers).end_reason == messages.NOT_ALLOWED
    # A ticket of Alice's for another tenant's server.
    foreign = issue_ticket(fault_world.alice, other)
    _, answer = open_console(foreign, fault_world.alice.pk)
    assert answer == {"ok": False, "error": messages.NOT_ALLOWED}
    # An account the panel does not list.
    unlisted = issue_ticket(fault_world.alice, web, account="nosuch")
    _, answer = open_console(unlisted, fault_world.alice.pk)
    assert answer == {"ok": False, "error": messages.NO_ACCOUNT}
    # An inactive user.
    fault_world.bob.is_active = False
    fault_world.bob.save()
    bobs = issue_ticket(fault_world.bob, other)
    _, answer = open_console(bobs, fault_world.bob.pk)
    assert answer == {"ok": False, "error": messages.NOT_ALLOWED}

    refused = audit("console.refused")
    assert len(refused) == 7
    reasons = {entry.details["reason"] for entry in refused}
    assert "permission denied: your role in this tenant is read-only" in reasons
    assert audit("console.opened") == []
    for server in (web, other):
        assert set(server_processes(fault_world.engine, server)) <= before[server.pk], "nothing was started"

    # Alice's ticket still opens her console; the operator opens any server's.
    client, answer = open_console(alices, fault_world.alice.pk)
    assert answer == {"ok": True}
    client.type("exit\n")
    assert client.wait_exit() == messages.SHELL_ENDED
    client, answer = open_console(issue_ticket(fault_world.operator, other), fault_world.operator.pk)
    assert answer == {"ok": True}
    client.type("hostname\n")
    client.read_until(f"\r\n{other.hostname}\r\n".encode())


def test_a_guest_account_gets_its_uid(fault_world, provision, open_console):
    from vservers.models import GuestAccount

    server = provision("web")
    account = fault_world.engine.accounts(server.engine_name).add("dave")
    GuestAccount.objects.create(server=server, name="dave", uid=account.uid, home=account.home, shell=account.shell)
    ticket = issue_ticket(fault_world.alice, server, account="dave")
    client, answer = open_console(ticket, fault_world.alice.pk)
    assert answer == {"ok": True}
    client.type("echo uid-$(id -u)-end\n")
    client.read_until(f"uid-{account.uid}-end\r\n".encode())
    client.type("exit\n")
    assert client.wait_exit() == messages.SHELL_ENDED
    assert ended(ticket).account == "dave"
    assert audit("console.closed")[0].details["account"] == "dave"


def test_a_server_that_stops_closes_its_console(fault_world, provision, open_console):
    server = provision("web")
    ticket = issue_ticket(fault_world.alice, server)
    client, answer = open_console(ticket, fault_world.alice.pk)
    assert answer == {"ok": True}
    client.type("echo ready\n")
    client.read_until(b"ready\r\n")
    fault_world.engine.stop(server.engine_name)
    assert client.wait_exit() == messages.SERVER_STOPPED
    assert ended(ticket).end_reason == messages.SERVER_STOPPED


def test_an_idle_console_ends(fault_world, provision, start_broker):
    server = provision("web")
    broker = start_broker(idle=2)
    ticket = issue_ticket(fault_world.alice, server)
    with ConsoleClient(broker.socket) as client:
        assert client.hello(ticket, fault_world.alice.pk) == {"ok": True}
        assert client.wait_exit() == messages.idle_reason(2)
    assert ended(ticket).end_reason == "Idle for 2 seconds without a keystroke."


def test_killing_the_broker_hangs_its_consoles_up(fault_world, provision, console_broker, open_console):
    """SIGKILL of the broker: its consoles are hung up as ssh's would be. The shell, its
    helper and a plain background job go; what the user detached on purpose (nohup,
    setsid: a daemon a service script starts) stays, as the guest's own program."""
    server = provision("web")
    before = set(server_processes(fault_world.engine, server))
    ticket = issue_ticket(fault_world.alice, server)
    client, answer = open_console(ticket, fault_world.alice.pk)
    assert answer == {"ok": True}
    client.type("sleep 1000 </dev/null >/dev/null 2>&1 &\n"
                "nohup sleep 1001 </dev/null >/dev/null 2>&1 &\nsetsid sleep 1002 </dev/null >/dev/null 2>&1 &\n")

    def sleeps() -> list[str]:
        return sorted(cmd for cmd in server_processes(fault_world.engine, server).values() if cmd.startswith("sleep"))

    wait_until(lambda: len(sleeps()) == 3, "the three sleeps to run in the server")
    during = set(server_processes(fault_world.engine, server))
    assert len(during - before) == 4  # the shell and the three sleeps
    console_broker.kill()
    try:
        wait_until(lambda: sleeps() == ["sleep 1001", "sleep 1002"], lambda: f"only the detached sleeps to "
                   f"stay: {server_processes(fault_world.engine, server)}")
        wait_until(lambda: len(set(server_processes(fault_world.engine, server)) - before) == 2,
                   lambda: f"the session's other processes to go: {server_processes(fault_world.engine, server)}")
    finally:
        for pid, cmd in server_processes(fault_world.engine, server).items():
            if cmd.startswith("sleep"):
                os.kill(pid, signal.SIGKILL)


def test_fifty_consoles_leak_no_fd_thread_or_process_in_the_broker(fault_world, provision, console_broker):
    from consoles.models import ConsoleSession

    server = provision("web")
    # One console first: what the broker opens once and keeps (its database connection...).
    ticket = issue_ticket(fault_world.alice, server)
    with ConsoleClient(console_broker.socket) as client:
        assert client.hello(ticket, fault_world.alice.pk) == {"ok": True}
        client.type("exit\n")
        assert client.wait_exit() == messages.SHELL_ENDED
    wait_until(lambda: console_broker.threads() == 1 or None, "the broker's connection thread to end")
    fds, children = console_broker.fds(), console_broker.children()
    for cycle in range(50):
        ticket = issue_ticket(fault_world.alice, server)
        with ConsoleClient(console_broker.socket) as client:
            assert client.hello(ticket, fault_world.alice.pk) == {"ok": True}
            client.type(f"echo cycle-$(({cycle}+1000))\n")
            client.read_until(f"cycle-{cycle + 1000}".encode())
            if cycle % 2:
                client.type("exit\n")  # the shell ends
                assert client.wait_exit() == messages.SHELL_ENDED
        # else: the web side closes
    wait_until(lambda: not ConsoleSession.objects.filter(ended__isnull=True).exists(), "every session's end")
    wait_until(lambda: console_broker.threads() == 1 or None, "the broker's connection threads to end")
    assert console_broker.fds() == fds
    assert console_broker.children() == children == []
    assert ConsoleSession.objects.count() == 51
    assert audit("console.closed").__len__() == 51


def test_garbage_from_the_web_side_ends_only_its_own_connection(fault_world, provision, console_broker, open_console):
    from consoles import protocol

    server = provision("web")
    # Not JSON, too long, wrong types: a plain refusal.
    for hello in (b"nonsense\n", b"{" + b" " * protocol.HELLO_LIMIT + b"}\n",
                  b'{"ticket": 1, "user": "x", "cols": 80, "rows": 24}\n',
                  b'{"ticket": "t", "user": 1, "cols": 0, "rows": 24}\n'):
        with ConsoleClient(console_broker.socket) as client:
            client.sock.sendall(hello)
            assert client.answer() == {"ok": False, "error": messages.BAD_HELLO}
    # A connection that says nothing and goes away.
    ConsoleClient(console_broker.socket).close()
    # A bad frame in a session: the session ends cleanly.
    ticket = issue_ticket(fault_world.alice, server)
    client, answer = open_console(ticket, fault_world.alice.pk)
    assert answer == {"ok": True}
    client.sock.sendall(b"Z\0\0\0\0")
    assert client.wait_exit() == messages.BAD_FRAME
    ticket = issue_ticket(fault_world.alice, server)
    client, answer = open_console(ticket, fault_world.alice.pk)
    assert answer == {"ok": True}
    client.sock.sendall(protocol.encode(protocol.RESIZE, b'{"cols": "wide"}'))
    assert client.wait_exit() == messages.BAD_FRAME
    # The broker still serves.
    client, answer = open_console(issue_ticket(fault_world.alice, server), fault_world.alice.pk)
    assert answer == {"ok": True}
    client.type("echo still-here-$((1+1))\n")
    client.read_until(b"still-here-2")
    assert console_broker.proc.poll() is None


def test_a_user_has_at_most_four_consoles(fault_world, provision, open_console):
    server = provision("web")
    clients = []
    for _ in range(messages.MAX_PER_USER):
        client, answer = open_console(issue_ticket(fault_world.alice, server), fault_world.alice.pk)
        assert answer == {"ok": True}
        clients.append(client)
    ticket = issue_ticket(fault_world.alice, server)
    _, answer = open_console(ticket, fault_world.alice.pk)
    assert answer == {"ok": False, "error": messages.USER_BUSY}
    assert session_of(ticket).started is None  # not spent: it works once a console is closed
    clients[0].type("exit\n")
    assert clients[0].wait_exit() == messages.SHELL_ENDED
    wait_until(lambda: _opens(ticket, fault_world.alice.pk, open_console), "a fifth console once one closed")


def _opens(ticket, user, open_console) -> bool:
    _, answer = open_console(ticket, user)
    return answer == {"ok": True}


def test_the_socket_is_for_its_group_only(fault_world, console_broker):
    mode = console_broker.socket.stat().st_mode & 0o777
    assert mode == 0o660
    assert console_broker.socket.stat().st_uid == 0


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_directory_others_could_write_is_refused(tmp_path, mode):
    from consoles.broker import check_directory

    directory = tmp_path / "d"
    directory.mkdir()
    os.chmod(directory, mode)
    os.chown(directory, 0, 12345)
    with pytest.raises(OSError, match="replace the console socket"):
        check_directory(directory, None)
    os.chmod(directory, 0o1000 | mode)  # /tmp-like: others cannot remove or rename root's socket
    check_directory(directory, None)


def test_stopping_the_broker_ends_its_consoles_with_a_reason(fault_world, provision, console_broker, open_console):
    server = provision("web")
    before = set(server_processes(fault_world.engine, server))
    ticket = issue_ticket(fault_world.alice, server)
    client, answer = open_console(ticket, fault_world.alice.pk)
    assert answer == {"ok": True}
    client.type("sleep 1000 </dev/null >/dev/null 2>&1 &\n")  # a plain job: hung up with its console
    wait_until(lambda: sleepers(fault_world.engine, server), "the sleep to run in the server")
    os.kill(console_broker.pid, signal.SIGTERM)
    assert client.wait_exit() == messages.SERVICE_STOPPED
    assert console_broker.proc.wait(timeout=PATIENCE) == 0
    assert ended(ticket).end_reason == messages.SERVICE_STOPPED
    assert not console_broker.socket.exists()
    assert set(server_processes(fault_world.engine, server)) <= before


def test_racing_hellos_with_one_ticket_open_one_console(fault_world, provision, console_broker):
    """The redemption is one UPDATE: of several connections presenting the same ticket at
    once, exactly one gets a console."""
    import threading

    server = provision("web")
    ticket = issue_ticket(fault_world.alice, server)
    clients = [ConsoleClient(console_broker.socket) for _ in range(4)]
    answers: list[dict] = []
    go = threading.Barrier(len(clients))

    def hello(client: ConsoleClient) -> None:
        go.wait()
        answers.append(client.hello(ticket, fault_world.alice.pk))

    threads = [threading.Thread(target=hello, args=(client,)) for client in clients]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE)
        assert sorted(answers, key=str) == [{"ok": False, "error": messages.EXPIRED}] * 3 + [{"ok": True}]
    finally:
        for client in clients:
            client.close()
    assert ended(ticket).end_reason == messages.WEB_CLOSED
    assert len(audit("console.opened")) == 1 and len(audit("console.refused")) == 3


def test_a_directory_of_another_user_is_refused(tmp_path):
    from consoles.broker import check_directory

    directory = tmp_path / "d"
    directory.mkdir(mode=0o755)
    os.chown(directory, 12345, 0)
    with pytest.raises(OSError, match="belongs to uid 12345"):
        check_directory(directory, None)
    os.chown(directory, 0, 0)
    check_directory(directory, None)

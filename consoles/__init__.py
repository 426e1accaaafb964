"""A terminal into a server from the browser.

The web process (unprivileged) authenticates the user, checks rights like every other view and
issues a ticket: a random secret, stored only as its SHA-256, bound to user, server and guest
account, valid for PANEL_CONSOLE_TICKET_SECONDS and usable once. The browser's WebSocket carries
the ticket to the web process, which relays it to the node's console broker (root) over a Unix
socket; the broker redeems the ticket in the database (single use) and attaches a terminal in the
server through the engine. protocol.py is what web and broker say to each other.
"""

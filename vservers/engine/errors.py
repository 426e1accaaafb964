"""Errors the engine raises; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class EngineError(Exception):
    """An operation could not be done; the message is meant for the operator."""

    exit_code = 1


class InvalidInput(EngineError):
    """A name, size, address or other argument is malformed (CLI exit status 2)."""

    exit_code = 2


class NotFound(EngineError):
    """The server or template does not exist."""

    exit_code = 3


class Conflict(EngineError):
    """The request clashes with the current state (address taken, server running, ...)."""

    exit_code = 4

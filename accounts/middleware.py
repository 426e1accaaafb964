"""Django's AuthenticationMiddleware, with the session epoch check (accounts.sessions): a
session opened before its user signed out elsewhere, or before the account was disabled, is
flushed and the request is anonymous.

It also remembers, for the length of a request, which request is being served, so that work
done without one (the worker, the reconciler, management commands) can be told apart from
work a user asked for (accounts.signals audits operations that nobody's request records).
"""

from __future__ import annotations

from contextvars import ContextVar

from asgiref.sync import sync_to_async
from django.contrib import auth
from django.contrib.auth.middleware import AuthenticationMiddleware as DjangoAuthenticationMiddleware
from django.contrib.auth.models import AnonymousUser
from django.utils.functional import SimpleLazyObject

from . import sessions

_current_request: ContextVar = ContextVar("panel_current_request", default=None)


def current_request():
    """The request this thread is serving, or None outside of one."""
    return _current_request.get()


def get_user(request):
    if not hasattr(request, "_cached_user"):
        user = auth.get_user(request)
        if user.is_authenticated and not sessions.is_current(request.session, user):
            request.session.flush()
            user = AnonymousUser()
        request._cached_user = user
    return request._cached_user


async def auser(request):
    return await sync_to_async(get_user)(request)


class AuthenticationMiddleware(DjangoAuthenticationMiddleware):
    # gunicorn runs the panel as WSGI; __call__ below is written for the synchronous path only.
    sync_capable = True
    async_capable = False

    def __call__(self, request):
        token = _current_request.set(request)
        try:
            return super().__call__(request)
        finally:
            _current_request.reset(token)

    def process_request(self, request):
        super().process_request(request)  # checks that the session middleware runs first
        request.user = SimpleLazyObject(lambda: get_user(request))
        request.auser = lambda: auser(request)

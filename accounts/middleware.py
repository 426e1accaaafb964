"""Django's AuthenticationMiddleware, with the session epoch check (accounts.sessions): a
session opened before its user signed out elsewhere, or before the account was disabled, is
flushed and the request is anonymous.

SecondFactorMiddleware (after django-otp's OTPMiddleware) holds sessions to two-factor
sign-in (accounts.two_factor).

It also remembers, for the length of a request, which request is being served, so that work
done without one (the worker, the reconciler, management commands) can be told apart from
work a user asked for (accounts.signals audits operations that nobody's request records).
"""

from __future__ import annotations

from contextvars import ContextVar

from asgiref.sync import sync_to_async
from django.contrib import auth, messages
from django.contrib.auth.middleware import AuthenticationMiddleware as DjangoAuthenticationMiddleware
from django.contrib.auth.models import AnonymousUser
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponseForbidden
from django.shortcuts import redirect
from django.utils.functional import SimpleLazyObject

from . import sessions, two_factor

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


class SecondFactorMiddleware:
    """Sessions and two-factor sign-in, for every view at once:

    1. a signed-in session of a user who has two-factor sign-in but did not give a code in
       it (opened before the authenticator was confirmed, or by any way around the login
       page) is flushed: the request is anonymous and a page asks to sign in again;
    2. an operator who must use it (accounts.two_factor.is_required) and has no verified
       session reaches only the set-up page and signing out: pages are redirected there,
       other requests refused (403).

    Requests without a session user (an API token's, an anonymous visitor's) pass as they
    are: they cost nothing here. A verified session costs django-otp's one query for its
    device; an unverified one, one query for whether the user has an authenticator.
    """

    # What an operator who must set it up may still reach.
    SET_UP = frozenset(
        {"two_factor", "two_factor_start", "two_factor_confirm", "logout", "login", "login_code", "healthz"}
    )

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        user = request.user
        # Only a user of the session: a user set by other means (an API token's) is not ours.
        if auth.SESSION_KEY not in request.session or not user.is_authenticated or two_factor.is_verified(request):
            return None
        if two_factor.is_enabled(user):
            request.session.flush()
            request.user = AnonymousUser()
            return redirect_to_login(request.get_full_path())
        if not two_factor.is_required(user) or request.resolver_match.view_name in self.SET_UP:
            return None
        if request.method not in ("GET", "HEAD"):
            return HttpResponseForbidden("Set up two-factor sign-in first (/accounts/two-factor/).")
        messages.info(request, "Operators sign in with a second factor here. Set it up to go on.")
        return redirect("two_factor")

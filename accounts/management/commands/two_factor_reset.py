"""Remove a user's two-factor sign-in (authenticator and recovery codes) and end the user's
sessions, for an operator who lost the phone and the recovery codes.

    manage.py two_factor_reset USERNAME

Operators reset tenant members' second factor on the tenant's page; an operator's own is not
for another operator to remove there, so it is done here, by whoever has a shell on the host
(who can do anything anyway). Audited as "2fa.reset" with no actor and "command": true.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts import two_factor


class Command(BaseCommand):
    help = "Remove a user's two-factor sign-in and end their sessions (a lost phone)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")

    def handle(self, *args, username: str, **options) -> None:
        model = get_user_model()
        user = model._default_manager.filter(**{model.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        if two_factor.reset(None, user, command=True):
            self.stdout.write(f"Two-factor sign-in of {username} is removed; their sessions are ended.")
        else:
            self.stdout.write(f"{username} had no two-factor sign-in; their sessions are ended.")

"""The Retry buttons of the operation tables: which of the operations shown the user may retry
now (vservers.actions.retryable), in one query, for the page and its refreshed fragment alike."""

from __future__ import annotations

from django import template

from vservers import actions

register = template.Library()


@register.simple_tag
def retryable_ids(operations, user) -> set[int]:
    return actions.retryable(operations, user)

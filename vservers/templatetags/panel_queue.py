"""What the pages say about the job queue: whether operations are waiting for it."""

from __future__ import annotations

from django import template

from vservers.models import Operation, OperationStatus
from vservers.models.operations import DELAYED_PREFIX

register = template.Library()


@register.simple_tag
def operations_delayed(user) -> bool:
    """Whether USER can see an operation that is saved but not handed to the job queue yet
    (Redis could not be reached): one query, on the status index, and no Redis call, so the
    pages load as fast with Redis down as with it up."""
    if not getattr(user, "is_authenticated", False):
        return False
    return (
        Operation.objects.restrict(user)
        .filter(status=OperationStatus.QUEUED, error__startswith=DELAYED_PREFIX)
        .exists()
    )

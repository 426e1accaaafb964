"""The tenant's area: a customer's own servers, what runs inside them, and their history.

Access goes through one helper, `_get_server_for_user`: it scopes by
`VirtualServer.objects.restrict(user)` and answers 404 for anyone else's server, so no view
can forget the tenant check. Read-only members may look but every POST answers 403.
Views never touch the kernel: they record an Operation (vservers.actions) and redirect.
"""

from .guest import account_add, account_delete, account_key, account_password, service_action
from .lists import PER_PAGE, dismiss_rejected, server_list, server_request, server_rows
from .servers import operation_retry, plan_change, server_action, server_cancel, server_detail

__all__ = [
    "PER_PAGE",
    "account_add",
    "account_delete",
    "account_key",
    "account_password",
    "dismiss_rejected",
    "operation_retry",
    "plan_change",
    "server_action",
    "server_cancel",
    "server_detail",
    "server_list",
    "server_request",
    "server_rows",
    "service_action",
]

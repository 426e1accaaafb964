"""The panel's models, split by topic."""

from .catalog import Node, Plan, Template
from .guest import GuestAccount, Service
from .ipam import IPAddress, IPPool, PoolExhausted
from .operations import FINISHED, Operation, OperationKind, OperationStatus
from .servers import IN_PROGRESS, ON_NODE, TERMINAL, State, VirtualServer

__all__ = [
    "FINISHED",
    "IN_PROGRESS",
    "IPAddress",
    "IPPool",
    "Node",
    "ON_NODE",
    "Operation",
    "OperationKind",
    "OperationStatus",
    "Plan",
    "PoolExhausted",
    "Service",
    "State",
    "TERMINAL",
    "Template",
    "GuestAccount",
    "VirtualServer",
]

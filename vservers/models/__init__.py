"""The panel's models, split by topic."""

from .builds import BuiltTemplate, TemplateBuild
from .catalog import Node, Plan, Template
from .guest import GuestAccount, Service
from .ipam import IPAddress, IPPool, PoolExhausted
from .keep import Backup, BackupFrequency, BackupKind, BackupSchedule, Snapshot
from .moves import ACTIVE_PHASES, Migration, MigrationPhase
from .operations import FINISHED, Operation, OperationKind, OperationStatus
from .servers import ON_NODE, TERMINAL, State, VirtualServer
from .transitions import GUEST_KINDS, IN_PROGRESS, TRANSITIONS, OnFailure, OnInterrupt, Retry, Transition
from .usage import UsageDaily, UsageFiveMin, UsageRaw

__all__ = [
    "ACTIVE_PHASES",
    "Migration",
    "MigrationPhase",
    "Backup",
    "BackupFrequency",
    "BackupKind",
    "BackupSchedule",
    "Snapshot",
    "BuiltTemplate",
    "TemplateBuild",
    "FINISHED",
    "GUEST_KINDS",
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
    "TRANSITIONS",
    "Template",
    "Transition",
    "OnFailure",
    "OnInterrupt",
    "Retry",
    "GuestAccount",
    "UsageDaily",
    "UsageFiveMin",
    "UsageRaw",
    "VirtualServer",
]

"""The lab file: found, read, validated into a Lab. Everything after it trusts a Lab."""

from labkit.labfile.find import LABS, known_labs, lab_file, shown
from labkit.labfile.load import load_lab, parse_lab, read_lab
from labkit.labfile.model import (
    SCHEDULERS,
    Check,
    Failover,
    Forwarding,
    Lab,
    LabError,
    Node,
    PortMapping,
    Protocol,
    RealServer,
    Role,
    Scheduler,
    SorryServer,
    Tunnel,
    VirtualService,
    with_weight,
)

__all__ = [
    "LABS",
    "SCHEDULERS",
    "Check",
    "Failover",
    "Forwarding",
    "Lab",
    "LabError",
    "Node",
    "PortMapping",
    "Protocol",
    "RealServer",
    "Role",
    "Scheduler",
    "SorryServer",
    "Tunnel",
    "VirtualService",
    "known_labs",
    "lab_file",
    "load_lab",
    "parse_lab",
    "read_lab",
    "shown",
    "with_weight",
]

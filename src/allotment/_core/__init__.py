"""The core: the one grant mechanism, with no threads' waiting, no faces and no diagnostics.

Faces import the core only through the names listed here (a test reads the imports to keep it
so). The core imports only the standard library, attrs, and allotment's errors.
"""

from ._amounts import Amount, Form, NamedForm, Quantity, ScalarForm, Units, form_for
from ._policies import Account, AccountTicket, BankerPolicy, FifoPolicy
from ._pool import AccountView, AdmissionPolicy, MemoryPool, Pool, Snapshot, TicketView
from ._tickets import (
    FINISHED,
    GRANTED,
    PENDING,
    REFUSED,
    Site,
    Ticket,
    TicketState,
    Waiter,
    caller_site,
    describe_site,
)

__all__ = [
    "FINISHED",
    "GRANTED",
    "PENDING",
    "REFUSED",
    "Account",
    "AccountTicket",
    "AccountView",
    "AdmissionPolicy",
    "Amount",
    "BankerPolicy",
    "FifoPolicy",
    "Form",
    "MemoryPool",
    "NamedForm",
    "Pool",
    "Quantity",
    "ScalarForm",
    "Site",
    "Snapshot",
    "Ticket",
    "TicketState",
    "TicketView",
    "Units",
    "Waiter",
    "caller_site",
    "describe_site",
    "form_for",
]

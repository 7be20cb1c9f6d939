"""The core: the one grant mechanism, with no threads' waiting, no faces and no diagnostics.

Faces import the core only through the names listed here (a test reads the imports to keep it
so). The core imports only the standard library, attrs, and allotment's errors.
"""

from ._amounts import Amount, Form, NamedForm, Quantity, ScalarForm, Units, form_for
from ._meter import (
    Entry,
    Meter,
    MeterRetired,
    MeterSnapshot,
    RateMeter,
    RateTicket,
    WaitingView,
)
from ._policies import Account, AccountTicket, BankerPolicy, FifoPolicy
from ._pool import (
    AccountView,
    AdmissionPolicy,
    MemoryPool,
    Pool,
    SectionLock,
    Snapshot,
    TicketView,
    new_section_lock,
    outside_stacklevel,
    report_unraisable,
)
from ._rate import NANOSECONDS, Gcra, RateRule, SlidingWindow, exact_positive, ticks_of
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
    task_of,
)

__all__ = [
    "FINISHED",
    "GRANTED",
    "NANOSECONDS",
    "PENDING",
    "REFUSED",
    "Account",
    "AccountTicket",
    "AccountView",
    "AdmissionPolicy",
    "Amount",
    "BankerPolicy",
    "Entry",
    "FifoPolicy",
    "Form",
    "Gcra",
    "MemoryPool",
    "Meter",
    "MeterRetired",
    "MeterSnapshot",
    "NamedForm",
    "Pool",
    "Quantity",
    "RateMeter",
    "RateRule",
    "RateTicket",
    "ScalarForm",
    "SectionLock",
    "Site",
    "SlidingWindow",
    "Snapshot",
    "Ticket",
    "TicketState",
    "TicketView",
    "Units",
    "Waiter",
    "WaitingView",
    "caller_site",
    "describe_site",
    "exact_positive",
    "form_for",
    "new_section_lock",
    "outside_stacklevel",
    "report_unraisable",
    "task_of",
    "ticks_of",
]

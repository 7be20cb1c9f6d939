"""Leases: what ``ResourceManager.acquire`` returns, and the only way units go back."""

from __future__ import annotations

import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Generic, cast

import attrs

from ._amounts import Amount
from ._claims import GRANTED, Claim, describe_site
from ._errors import LeaseReleased

if TYPE_CHECKING:
    from ._manager import ResourceManager

__all__ = ["Lease"]


@attrs.define(eq=False, repr=False)
class Lease(Claim, Generic[Amount]):
    """Units granted by a :class:`ResourceManager`, returned exactly once.

    A lease returns exactly what it holds: :meth:`release` with no argument gives back all of
    it (a second call does nothing), and a partial release can never give back more than the
    lease still holds. Use it as a context manager so the units return even when the body
    raises::

        with pool.acquire(2) as lease:
            ...

    A lease may be released from any thread. A lease that is garbage-collected while it still
    holds units returns them and emits a :class:`ResourceWarning` that names where it was
    acquired.
    """

    @property
    def manager(self) -> ResourceManager[Amount]:
        """The manager that granted this lease."""
        return self._manager

    @property
    def _manager(self) -> ResourceManager[Amount]:
        return cast("ResourceManager[Amount]", self._owner)

    @property
    def amounts(self) -> Amount:
        """What the lease holds now: an int, or a dict of the resources it still holds.

        ``0`` or ``{}`` once released.
        """
        return self._manager._form.render(self._units)

    @property
    def released(self) -> bool:
        """``True`` once the lease holds nothing."""
        return self._state is not GRANTED

    def release(self, amount: Amount | None = None) -> None:
        """Give back ``amount`` units early, or everything the lease still holds.

        With no argument this is idempotent. A partial ``amount`` takes the manager's form (an
        int, or a mapping of resource names) and raises :class:`ReleaseExceedsHeld` if it is
        more than the lease holds, or another :class:`InvalidAmount` if it is malformed; in
        both cases nothing is released. Units given back go to waiting requests at once.
        """
        self._manager._release(self, amount)

    def __enter__(self) -> Lease[Amount]:
        if self._state is not GRANTED:
            raise LeaseReleased("this lease was already released and holds nothing")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._owner._allocator.release(self, None)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        state = "released" if self.released else f"holding {self.amounts!r}"
        return f"<allotment.Lease {state} from {self._manager.name!r}>"

    def __del__(self) -> None:
        if self._state is not GRANTED:
            return
        # A leak: hand the units back first, so a warning turned into an error loses nothing.
        held = self._manager._form.render(self._units)
        self._manager._allocator.reclaim(self)
        site = describe_site(self._site) or "an unrecorded site (capture_sites=False)"
        warnings.warn(
            f"a lease of {held!r} from {self._manager.name!r} was garbage-collected while "
            f"still held; it was acquired at {site} by thread {self._thread.name!r}. Its units "
            "were returned; release leases with a with-block or Lease.release()",
            ResourceWarning,
            stacklevel=2,
            source=self,
        )

"""Probe grants with an identity, so an agent takes each one once.

A grant carries its number and the granting process's series (``ProbeGrant.number``,
``ProbeGrant.series``): a grant delivered twice (a duplicated message) would otherwise give
its agent a second permit, and the fleet one probe more than ``success_threshold``. The
series is drawn at random when the process starts, so a restarted replica or a new leader,
never repeats a predecessor's identity. The numbers start at a random point too, so that a
number alone (what an agent reports its probe results under, ``OutcomeSummary.probe_grants``)
practically never names a grant of another process.
"""

from __future__ import annotations

import secrets

from mission_control.resilience.v1 import control_plane_pb2 as pb

__all__ = ["GrantNumbers"]


class GrantNumbers:
    """Numbers the grants one process makes."""

    __slots__ = ("made", "series")

    def __init__(self, series: int | None = None) -> None:
        #: Never 0 (0 = not said, a grant from a process that does not number them).
        self.series = series if series is not None else secrets.randbits(63) + 1
        #: The last number given (the first is one above a random start).
        self.made = secrets.randbits(40)

    def stamp(self, grant: pb.ProbeGrant) -> pb.ProbeGrant:
        """``grant`` with the next number of this process (one not numbered yet)."""
        if not grant.number:
            self.made += 1
            grant.number, grant.series = self.made, self.series
        return grant

"""Probe permits that know the grant they were given under.

A permit the control plane holds is its expiry time (a float, as :class:`.CircuitBreaker`
keeps them); :class:`Permit` is that float with the grant's number
(``ProbeGrant.number``). A probe result that names its grant
(``OutcomeSummary.probe_grants``) then settles that very permit and no other: the result of
a probe begun under a permit an agent lost with its stream is not taken for the permit it
was given after it reconnected.

Pure logic, no clock.
"""

from __future__ import annotations

__all__ = ["Permit", "pop_number"]


class Permit(float):
    """A permit's expiry time, with the number of the grant it was given under (0: none)
    and, at an agent, when a probe under it ends at the latest (the granter's hold less a
    clock-skew margin, ``client/probes.py``; infinite when not said)."""

    number: int
    hold_end: float

    def __new__(cls, expiry: float, number: int = 0, hold: float = float("inf")) -> Permit:
        permit = super().__new__(cls, expiry)
        permit.number = number
        permit.hold_end = hold
        return permit


def pop_number(permits: dict[str, list[float]], holder: str, number: int) -> float | None:
    """Take ``holder``'s permit of grant ``number`` out of ``permits``; None when it holds
    none (a number 0 names no grant)."""
    held = permits.get(holder)
    if not held or not number:
        return None
    for i, permit in enumerate(held):
        if getattr(permit, "number", 0) == number:
            del held[i]
            if not held:
                del permits[holder]
            return permit
    return None

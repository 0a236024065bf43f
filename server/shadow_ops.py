"""Operator writes of shadow mode: publish a candidate, clear it, promote it.

Candidates are written with compare-and-swap like policies and acknowledged only once
stored. Promoting goes through the control plane's ordinary policy write (the one every
policy change takes), then clears the candidate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mission_control.client.config import policy_from_json, policy_to_json
from mission_control.client.errors import ConfigurationError, StorageFailure
from mission_control.client.policy import ServicePolicy

from .audit import ENGINE, Author
from .control_plane import check_policies_fit
from .shadow import no_candidate, shadow_write
from .store import StoreUnavailable, Write
from .writes import not_taken

if TYPE_CHECKING:
    from .control_plane import ControlPlane

_log = logging.getLogger("mission_control.server.shadow")

__all__ = ["clear_candidate", "promote_candidate", "put_candidate"]


async def put_candidate(plane: ControlPlane, policy: ServicePolicy, author: Author = ENGINE) -> int:
    """Publish a validated ``policy`` as its service's candidate; returns its revision.

    Raises:
        ConfigurationError: the candidates and policies would not fit in a snapshot.
        StorageFailure: the store did not take the write.
    """
    others = [p for p in plane.shadows.all() if p.service != policy.service]
    check_policies_fit([*plane.policies.all(), *others, policy])
    stored = plane.shadows.stored(policy.service)
    write = shadow_write(plane.shadows, policy, policy.service, None)
    revision = await _commit(plane, "put shadow policy", write, author, "shadow.put")
    if stored is None or stored[0] != policy:
        _log.info("policy %s in shadow mode (revision %d)", policy.service, revision)
    return revision


async def clear_candidate(plane: ControlPlane, service: str, author: Author = ENGINE) -> bool:
    """Drop ``service``'s candidate; False when there was none. Raises StorageFailure."""
    if plane.shadows.stored(service) is None:
        return False
    write = shadow_write(plane.shadows, None, service, None)
    await _commit(plane, "clear shadow policy", write, author, "shadow.clear")
    return True


async def promote_candidate(
    plane: ControlPlane, service: str, expected_revision: int = 0, author: Author = ENGINE
) -> tuple[ServicePolicy, int] | None:
    """Make ``service``'s candidate its enforced policy, then clear the candidate. The
    policy is written only if its stored revision is still ``expected_revision`` (0: the
    one held here now; none held: only if none is stored meanwhile). Returns the policy
    and its revision, or None when the policy changed meanwhile (nothing is written then).

    Raises:
        ConfigurationError: there is no candidate.
        StorageFailure: the store did not take a write.
    """
    stored = plane.shadows.stored(service)
    if stored is None:
        raise no_candidate(service)
    candidate, candidate_revision = stored
    if not expected_revision:
        expected_revision = plane.policies.revision_of(service)  # also a refused value's
    others = [p for p in plane.policies.all() if p.service != service]
    check_policies_fit([*others, candidate])
    # A compare-and-swap even with no policy held: expected revision 0 is "still absent".
    write = Write(plane.policies.key(service), policy_to_json(candidate).encode(), expected_revision)
    written = await plane.writer.write_policies([write], author, "shadow.promote")
    if not written.ok:
        return None
    revision = written.revision
    # Cleared only if still the candidate that was promoted: one published meanwhile stays.
    clear = shadow_write(plane.shadows, None, service, candidate_revision)
    try:
        cleared = (await plane.writer.commit([clear], author=author, action="shadow.clear")).ok
        if not cleared:
            cleared = await _clear_unreadable(plane, service, author)
    except StoreUnavailable as err:
        _log.warning("policy %s promoted; its candidate not cleared yet: %s", service, err)
        raise StorageFailure(
            "etcd", "clear shadow policy", "promoted, but the candidate is still in shadow mode"
        ) from err
    if cleared:
        plane.shadows.apply(clear.key, None, revision)
    return candidate, revision


async def _clear_unreadable(plane: ControlPlane, service: str, author: Author) -> bool:
    """Clear the candidate key if what it holds now is no candidate (unreadable: put from
    outside), in a compare-and-swap on its current revision; a valid candidate published
    meanwhile stays. Whether it was cleared. Raises StoreUnavailable."""
    entry = await plane.store.get(plane.shadows.key(service))
    if entry is None:
        return True
    try:
        policy_from_json(entry.value, service=service)
        return False  # a candidate published meanwhile: kept
    except ConfigurationError:
        pass
    clear = shadow_write(plane.shadows, None, service, entry.mod_revision)
    return (await plane.writer.commit([clear], author=author, action="shadow.clear")).ok


async def _commit(plane: ControlPlane, what: str, write: Write, author: Author, action: str) -> int:
    try:
        result = await plane.writer.commit([write], author=author, action=action)
    except StoreUnavailable as err:
        _log.warning("%s not written: %s", what, err)
        raise StorageFailure("etcd", what, not_taken(err)) from err
    if result.ok:
        plane.shadows.apply(write.key, write.value, result.revision)
    return result.revision

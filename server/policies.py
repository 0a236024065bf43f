"""The policies in force: loaded from the store, replaced whole, never by a bad value.

Every value under ``<prefix>/policies/`` is protobuf JSON of a ``ServicePolicy``. A value
that does not parse or validate is logged, counted and kept visible (``errors``); the
service keeps its last good policy — also across restarts, when the control plane finds an
earlier good revision of the key (:meth:`keep_earlier`). Services without a stored policy
get the seed's defaults.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from mission_control.client.config import policy_from_json
from mission_control.client.errors import ConfigurationError
from mission_control.client.policy import SEED_PRESETS, ServicePolicy, default_policy, service_of

_log = logging.getLogger("mission_control.server.policies")

PolicyListener = Callable[[str, ServicePolicy | None], None]

#: Default policies of unnamed services kept built (looked up on every summary).
_DEFAULTS_KEPT = 4096
_BASE_DEFAULT = default_policy("default")


@dataclass(frozen=True, slots=True)
class LoadError:
    key: str
    error: str
    at: float  # epoch seconds
    #: The refused value's revision (0: not known), to tell whether etcd still holds it.
    revision: int = 0


class PolicyBook:
    """Service name -> the policy in force, with its store revision.

    Args:
        prefix: the control plane's key prefix.
        wall: wall-clock seconds (when a refused value was refused, as shown).
    """

    def __init__(self, prefix: str, wall: Callable[[], float] = time.time) -> None:
        self.prefix = prefix.rstrip("/") + "/policies/"
        self.wall = wall
        self._policies: dict[str, tuple[ServicePolicy, int]] = {}
        #: service -> the revision of a refused value the store holds now (the key's
        #: revision, which a compare-and-swap that replaces it must name).
        self._refused: dict[str, int] = {}
        #: Any other key (a breaker record) -> the revision of the refused value it holds.
        self._refused_keys: dict[str, int] = {}
        self._defaults: OrderedDict[str, ServicePolicy] = OrderedDict()
        self.errors: deque[LoadError] = deque(maxlen=50)
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.listeners: list[PolicyListener] = []
        #: Called with True for each value applied, False for each refused.
        self.on_reload: Callable[[bool], None] | None = None

    def key(self, service: str) -> str:
        return self.prefix + service

    def service_of(self, key: str) -> str | None:
        return key[len(self.prefix) :] if key.startswith(self.prefix) else None

    def policy_of(self, service: str) -> ServicePolicy:
        """The policy in force for a service, or for a breaker name: an endpoint's breaker
        (``service/endpoint``) follows its service's policy."""
        service = service_of(service)
        found = self._policies.get(service)
        return found[0] if found else self._default_of(service)

    def _default_of(self, service: str) -> ServicePolicy:
        # Built and validated once per name, not on each summary: the defaults with the
        # name replaced (a seed preset is built in full).
        policy = self._defaults.get(service)
        if policy is not None:
            self._defaults.move_to_end(service)
            return policy
        if service in SEED_PRESETS:
            policy = default_policy(service)
        else:
            policy = copy.copy(_BASE_DEFAULT)
            object.__setattr__(policy, "service", service)
        self._defaults[service] = policy
        if len(self._defaults) > _DEFAULTS_KEPT:
            self._defaults.popitem(last=False)
        return policy

    def stored(self, service: str) -> tuple[ServicePolicy, int] | None:
        return self._policies.get(service)

    def revision_of(self, service: str) -> int:
        """The revision the store holds the service's key at (0: none), also when what it
        holds there was refused and the last good value stays in force."""
        found = self._policies.get(service)
        return max(self._refused.get(service, 0), found[1] if found else 0)

    def refused_at(self, service: str) -> int:
        """The revision of the refused value the store holds for ``service`` (0: none)."""
        return self._refused.get(service, 0)

    def refused_keys(self) -> list[str]:
        """The keys of the policies whose stored value is refused now."""
        return [self.key(service) for service in self._refused]

    def held_refused(self, key: str) -> int:
        """The revision of the refused value the store holds at ``key`` now (0: none)."""
        service = self.service_of(key)
        return self._refused.get(service, 0) if service is not None else self._refused_keys.get(key, 0)

    def cleared(self, key: str) -> None:
        """``key`` (not a policy's) holds a good value again, or none."""
        self._refused_keys.pop(key, None)

    def refused_now(self) -> list[LoadError]:
        """The refused values the store still holds, newest first, one per key."""
        found: dict[str, LoadError] = {}
        for err in reversed(self.errors):
            if err.revision and err.key not in found and self.held_refused(err.key) == err.revision:
                found[err.key] = err
        return list(found.values())

    def refused_past(self) -> list[LoadError]:
        """The refused values the store no longer holds: their key has held another value
        since (a good one, a newer refused one, or none)."""
        return [e for e in self.errors if e.revision and self.held_refused(e.key) != e.revision]

    def all(self) -> list[ServicePolicy]:
        return [self._policies[name][0] for name in sorted(self._policies)]

    def apply(self, key: str, value: bytes | None, revision: int) -> bool:
        """Apply a stored value (None = deleted). Returns whether the policy changed.

        A bad value changes nothing: it is recorded in ``errors`` and counted.
        """
        service = self.service_of(key)
        if service is None:
            return False
        if value is None:
            self._refused.pop(service, None)
            if self._policies.pop(service, None) is None:
                return False
            self._counted(True)
            self._notify(service, None)
            return True
        current = self._policies.get(service)
        if (current is not None and current[1] >= revision) or self._refused.get(service, 0) >= revision:
            return False  # held already (a reload), or refused already
        try:
            policy = policy_from_json(value, service=service)
        except ConfigurationError as err:
            detail = "; ".join(f"{f}: {m}" for f, m in err.violations)
            kept = f"the last good value (revision {current[1]})" if current else "the defaults"
            self._refused[service] = revision
            self.refused(key, f"{detail}; in force: {kept}", revision)
            return False
        self._policies[service] = (policy, revision)
        self._refused.pop(service, None)
        self._counted(True)
        if current is None or current[0] != policy:
            self._notify(service, policy)
            return True
        return False

    def forget_revisions(self) -> None:
        """The store lost its data: keep every policy, as never stored."""
        self._policies = {name: (policy, 0) for name, (policy, _) in self._policies.items()}
        self._refused.clear()
        self._refused_keys.clear()

    def refused(self, key: str, detail: str, revision: int = 0) -> None:
        """Count and show a stored value that was not applied (a policy or any other
        record); ``revision`` (the refused value's) tells later whether the store still
        holds it."""
        self._counted(False)
        detail = f"revision {revision}: {detail}" if revision else detail
        self.errors.append(LoadError(key, detail, self.wall(), revision))
        if revision and self.service_of(key) is None:
            self._refused_keys[key] = revision
        _log.error("ignored invalid value at %s: %s", key, detail)

    def restate(self, key: str, revision: int, in_force: str) -> None:
        """Say what is in force instead of the refused value of ``key`` at ``revision``
        (found after it was refused: an earlier good value)."""
        previous = next((e for e in reversed(self.errors) if e.key == key and e.revision == revision), None)
        detail = previous.error.rpartition("; in force: ")[0] + "; " if previous else ""
        kept = [e for e in self.errors if e is not previous]
        self.errors.clear()
        self.errors.extend(kept)
        self.errors.append(LoadError(key, f"{detail}in force: {in_force}", self.wall(), revision))
        if self.service_of(key) is None:
            self._refused_keys[key] = revision

    def keep_earlier(
        self,
        key: str,
        earlier: bytes,
        earlier_revision: int,
        revision: int,
        source: str = "the last good value",
    ) -> bool:
        """The value at ``revision`` is bad and nothing good is held (a restart): put the
        key's earlier good value (``earlier_revision``) in force; the key's revision for a
        compare-and-swap stays ``revision`` (:meth:`revision_of`). False when it is bad too."""
        service = self.service_of(key)
        if service is None:
            return False
        try:
            policy = policy_from_json(earlier, service=service)
        except ConfigurationError:
            return False
        self._policies[service] = (policy, earlier_revision)
        self._refused[service] = revision
        self.restate(key, revision, f"{source} (revision {earlier_revision})")
        _log.warning("policy %s: the stored value is bad; revision %d is in force", service, earlier_revision)
        self._notify(service, policy)
        return True

    def _counted(self, ok: bool) -> None:
        if ok:
            self.reloads_ok += 1
        else:
            self.reloads_failed += 1
        if self.on_reload is not None:
            self.on_reload(ok)

    def _notify(self, service: str, policy: ServicePolicy | None) -> None:
        for listener in list(self.listeners):
            try:
                listener(service, policy)
            except Exception:
                _log.exception("policy listener failed")

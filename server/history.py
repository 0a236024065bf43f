"""What the audit records and etcd's revisions tell: listing, history, and rollback.

A rollback writes an earlier value back in a compare-and-swap on the revision the caller
saw, so a change made meanwhile makes it fail (nothing written) instead of being lost. A
config rollback puts back, in one transaction, every policy one import changed, and only
if none of them changed since the import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mission_control.client.config import policy_from_json, policy_to_proto
from mission_control.client.errors import ConfigurationError
from mission_control.client.policy import ServicePolicy, breaker_name_problem, name_problem
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .audit import MAX_IMPORTS_KEPT, Author
from .audit_read import IMPORTS, KINDS, valid_token, value_of
from .control_plane import ControlPlane, check_policies_fit
from .store import WatchCompacted, Write

#: Earlier revisions of a policy key read back from etcd (beyond the records).
HISTORY_DEPTH = 50
MAX_PAGE = 1000


class HistoryError(Exception):
    """A request history cannot answer: ``not_found`` (nothing kept) or a conflict."""

    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


@dataclass(frozen=True, slots=True)
class Rollback:
    changes: list[pb.PolicyChange]
    revision: int
    #: The import undone (config rollback).
    undone: int = 0


async def list_records(
    plane: ControlPlane, request: pb.ListAuditRecordsRequest
) -> pb.ListAuditRecordsResponse:
    """One page of the records that match the request's filters, newest first, read
    with bounded work whatever is kept. Raises ConfigurationError naming every bad
    filter; StoreUnavailable."""
    violations = []
    if request.service and breaker_name_problem(request.service):
        violations.append(("service", breaker_name_problem(request.service) or ""))
    if request.kind not in ("", *KINDS):
        violations.append(("kind", f"must be one of {', '.join(KINDS)} or empty"))
    if not valid_token(request.page_token):
        violations.append(("page_token", "is not a token this server handed out"))
    if violations:
        raise ConfigurationError.from_violations(violations)
    since = request.since.ToNanoseconds() if request.HasField("since") else 0
    page = await plane.audit.page(
        kinds=(request.kind,) if request.kind else KINDS,
        size=request.page_size if 0 < request.page_size <= MAX_PAGE else MAX_PAGE,
        token=request.page_token,
        name=request.service,
        since_ns=since,
    )
    return pb.ListAuditRecordsResponse(
        records=page.records, next_page_token=page.token, records_read=page.read
    )


async def policy_history(plane: ControlPlane, service: str) -> tuple[list[pb.AuditRecord], int]:
    """Every version of a policy still known, oldest first: the records, and the
    revisions etcd still holds that no record describes (identity empty); and the
    revision etcd holds now (0: no policy). Raises StoreUnavailable."""
    kept = await plane.audit.of("policy", service, plane.audit.retention.max_records + MAX_PAGE)
    versions = {r.revision: r for r in kept}
    key = plane.policies.key(service)
    entry = await plane.store.get(key)
    current = entry.mod_revision if entry is not None else 0
    for _ in range(HISTORY_DEPTH):
        if entry is None:
            break
        if entry.mod_revision not in versions:
            versions[entry.mod_revision] = pb.AuditRecord(
                kind="policy",
                name=service,
                new_value=entry.value.decode(errors="replace"),
                revision=entry.mod_revision,
            )
        try:
            entry = await plane.store.get(key, revision=entry.mod_revision - 1)
        except WatchCompacted:
            break
    return [versions[r] for r in sorted(versions)], current


def value_at(versions: list[pb.AuditRecord], revision: int) -> bytes | None:
    """The policy's value as of ``revision`` (None: absent then). Raises HistoryError
    when no version at or before it is kept."""
    earlier = [v for v in versions if v.revision <= revision]
    if not earlier:
        raise HistoryError(f"no version at or before revision {revision} is kept")
    return value_of(earlier[-1].new_value)


def _target(versions: list[pb.AuditRecord], to_revision: int) -> tuple[bytes | None, int]:
    if to_revision:
        return value_at(versions, to_revision), to_revision
    if len(versions) >= 2:
        return value_of(versions[-2].new_value), versions[-2].revision
    if versions and versions[-1].old_value:
        return value_of(versions[-1].old_value), versions[-1].revision - 1
    raise HistoryError("no earlier version is kept")


def _undoes_one_change(service: str, versions: list[pb.AuditRecord], current: int, to: int) -> None:
    """A rollback that names no revision it undoes may undo one change only: the last,
    and never a rollback (two operators undoing the same change would cancel out).
    Raises HistoryError (a conflict: exit 6)."""
    after = [v for v in versions if v.revision > to] if to else versions[-1:]
    if to and len(after) > 1:
        raise HistoryError(
            f"policy {service!r} changed {len(after)} times since revision {to} (last at {current}); "
            f"to undo them all say so: --if-revision {current}; nothing written",
            conflict=True,
        )
    if not to and after and after[0].action in ("policy.rollback", "config.rollback"):
        raise HistoryError(
            f"the last change of {service!r} (revision {after[0].revision}) is a rollback by "
            f"{after[0].identity}; to undo it say so: --if-revision {after[0].revision}; nothing written",
            conflict=True,
        )


def _parse(service: str, value: bytes | None) -> ServicePolicy | None:
    return policy_from_json(value, service=service) if value is not None else None


async def rollback_policy(plane: ControlPlane, request: pb.RollbackPolicyRequest, identity: str) -> Rollback:
    """Put an earlier version of a policy back. Raises HistoryError (nothing kept, or
    changed meanwhile), ConfigurationError, StorageFailure."""
    service = request.service
    if name_problem(service):
        raise ConfigurationError("service", name_problem(service) or "")
    if request.to_revision < 0:
        raise ConfigurationError("to_revision", f"{request.to_revision} is not a revision")
    versions, current = await policy_history(plane, service)
    if request.to_revision > max(current, *(v.revision for v in versions), 0):
        raise ConfigurationError("to_revision", f"no revision {request.to_revision} yet (now at {current})")
    if not request.expected_revision:
        _undoes_one_change(service, versions, current, request.to_revision)
    value, revision = _target(versions, request.to_revision)
    policy = _parse(service, value)
    stored = plane.policies.stored(service)
    if policy is not None:
        others = [p for p in plane.policies.all() if p.service != service]
        check_policies_fit([*others, policy])
    elif stored is None:
        raise HistoryError(f"{service!r} had no policy at revision {revision}, and has none now")
    expected = request.expected_revision or current
    reason = f"{request.reason} (back to revision {revision})".strip()
    result = await plane.writer.write_policies(
        [Write(plane.policies.key(service), value, expected)], Author(identity, reason), "policy.rollback"
    )
    if not result.ok:
        raise HistoryError(
            f"policy {service!r} changed since revision {expected}; nothing written", conflict=True
        )
    return Rollback([_change(service, stored[0] if stored else None, policy)], result.revision)


async def rollback_config(plane: ControlPlane, request: pb.RollbackConfigRequest, identity: str) -> Rollback:
    """Undo one import: every policy it changed gets its earlier value back, in one
    transaction, unless any of them changed since. What the import replaced is read
    from its one bundle record: pruned, it is pruned whole, never in part. Raises
    HistoryError, ConfigurationError, StorageFailure."""
    at, replaced = await _import_bundle(plane, request.import_revision)
    writes, changes, restored = [], [], {}
    for name, old in sorted(replaced.items()):
        value = value_of(old or "")
        policy = _parse(name, value)
        stored = plane.policies.stored(name)
        changes.append(_change(name, stored[0] if stored else None, policy))
        writes.append(Write(plane.policies.key(name), value, at))
        restored[name] = policy
    kept = [p for p in plane.policies.all() if p.service not in restored]
    check_policies_fit([*kept, *(p for p in restored.values() if p is not None)])
    reason = f"{request.reason} (undo the import at revision {at})".strip()
    result = await plane.writer.write_policies(writes, Author(identity, reason), "config.rollback")
    if not result.ok:
        changed = sorted(
            plane.policies.service_of(k) or k
            for k, e in result.current.items()
            if (e.mod_revision if e else 0) != at and plane.policies.service_of(k)
        )
        raise HistoryError(
            f"changed since the import at revision {at}: {', '.join(changed)}; nothing written", conflict=True
        )
    return Rollback(changes, result.revision, at)


async def _import_bundle(plane: ControlPlane, revision: int) -> tuple[int, dict[str, str | None]]:
    """The import at ``revision`` (0: the latest kept) and what it replaced, by service."""
    page = await plane.audit.page(kinds=(IMPORTS,), size=MAX_IMPORTS_KEPT, verify=False)
    bundles = [r for r in page.records if r.action == "config.import"]
    if not bundles:
        raise HistoryError("no config import is kept in the audit records")
    found = [r for r in bundles if r.revision == revision] if revision else bundles[:1]
    if not found:
        kept = ", ".join(str(r.revision) for r in bundles[:10])
        raise HistoryError(f"no config import at revision {revision} is kept (kept: {kept})")
    try:
        replaced = json.loads(found[0].old_value)
    except ValueError:
        replaced = None
    if not isinstance(replaced, dict) or not all(isinstance(v, str | None) for v in replaced.values()):
        raise HistoryError(f"the record of the import at revision {found[0].revision} is damaged")
    problems = sorted(str(name)[:130] for name in replaced if name_problem(name))
    if problems:
        raise HistoryError(f"the record of the import names no valid policy: {', '.join(problems)}")
    return found[0].revision, replaced


def _change(service: str, before: ServicePolicy | None, after: ServicePolicy | None) -> pb.PolicyChange:
    change = pb.PolicyChange(service=service)
    if before is not None:
        change.before.CopyFrom(policy_to_proto(before))
    if after is not None:
        change.after.CopyFrom(policy_to_proto(after))
    change.action = "removed" if after is None else "added" if before is None else "changed"
    return change

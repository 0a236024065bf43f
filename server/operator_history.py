"""Operator commands about changes: ``audit``, ``policies history|diff|rollback``,
``breakers history`` and ``config rollback``.

Their command-line parts are added by :func:`add_parsers`; :func:`dispatch` runs them with
the exit codes of :mod:`.operator` (6: changed concurrently, nothing written).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from mission_control.resilience.v1 import control_plane_pb2 as pb

from .json_values import json_values
from .operator import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_OK, CommandError, Operator, _print_table, _safe
from .policy_changes import changed_fields

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def since(text: str) -> datetime:
    """``10m``, ``2h``, ``7d`` ago, or an ISO 8601 time (UTC unless it says otherwise)."""
    match = _AGO.match(text)
    if match:
        try:
            return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
        except OverflowError:  # before year 1: no time can be shown
            raise argparse.ArgumentTypeError(f"{text!r} is too long ago (before the year 1)") from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a time (ISO 8601) nor an age like 10m, 2h, 7d"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def add_parsers(
    action: Callable[[argparse._SubParsersAction, str, str], argparse.ArgumentParser],  # type: ignore[type-arg]
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    config: argparse._SubParsersAction,  # type: ignore[type-arg]
    breakers: argparse._SubParsersAction,  # type: ignore[type-arg]
    policies: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    """Add the commands of this module to the parsers of ``cli_args``."""
    a = action(commands, "audit", "who changed which policy or breaker, when, why, from what to what")
    a.add_argument("--service", default="", help="only the records of this policy or breaker")
    a.add_argument(
        "--since", type=since, default=None, help="only from this time (ISO 8601) or age (10m, 2h, 7d)"
    )
    a.add_argument(
        "--limit", type=int, default=100, metavar="N", help="the newest N records at most (default 100)"
    )
    h = action(policies, "history", "the versions of a policy kept, who made each and why")
    h.add_argument("name", help="the service whose policy")
    d = action(policies, "diff", "what changed in a policy between two revisions of its history")
    d.add_argument("name", help="the service whose policy")
    d.add_argument("rev1", type=int, help="the earlier revision")
    d.add_argument("rev2", type=int, help="the later revision")
    r = action(
        policies, "rollback", "put an earlier version of a policy back (exit 6 if it changed meanwhile)"
    )
    r.add_argument("name", help="the service whose policy")
    r.add_argument(
        "--to", type=int, default=0, metavar="REV", help="the version to restore (default: the previous)"
    )
    r.add_argument(
        "--if-revision",
        type=int,
        default=0,
        metavar="REV",
        help="only if the policy is still at this revision (default: undo the last change, not a rollback)",
    )
    r.add_argument("--reason", default="", help="why, kept in the audit record")
    b = action(breakers, "history", "a breaker's transitions: states, reasons, who or what caused them")
    b.add_argument("name", help="the breaker's name")
    c = action(config, "rollback", "undo a config import: every policy it changed, in one transaction")
    c.add_argument(
        "--to", type=int, default=0, metavar="REV", help="the import's revision (default: the latest)"
    )
    c.add_argument("--reason", default="", help="why, kept in the audit records")


def dispatch(op: Operator, args: argparse.Namespace) -> int | None:
    """Run the command if it is one of this module's; None otherwise."""
    command, action = args.command, getattr(args, "action", "")
    if command == "audit":
        return audit(op, args.service, args.since, args.limit)
    if command == "policies" and action == "history":
        return policy_history(op, args.name)
    if command == "policies" and action == "diff":
        return policy_diff(op, args.name, args.rev1, args.rev2)
    if command == "policies" and action == "rollback":
        return policy_rollback(op, args.name, args.to, args.if_revision, args.reason)
    if command == "breakers" and action == "history":
        return breaker_history(op, args.name)
    if command == "config" and action == "rollback":
        return config_rollback(op, args.to, args.reason)
    return None


def _records(op: Operator, request: pb.ListAuditRecordsRequest, limit: int = 0) -> list[pb.AuditRecord]:
    """The records, newest first: every one, or the newest ``limit``."""
    records: list[pb.AuditRecord] = []
    while True:
        if limit:
            request.page_size = min(limit - len(records), 1000)
        response = op._call(op.stub.ListAuditRecords, request)
        records += response.records
        if not response.next_page_token or (limit and len(records) >= limit):
            return records
        request.page_token = response.next_page_token


def _time(record: pb.AuditRecord) -> str:
    return record.time.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _summary(record: pb.AuditRecord) -> str:
    """What changed, in a few words: the fields of a policy, the state of a breaker; a
    value stored but refused (never in force) says so first."""
    if record.action == "etcd.refused":
        return f"REFUSED, not in force: {_change(record)}"
    return _change(record)


def _change(record: pb.AuditRecord) -> str:
    old, new = _values(record.old_value), _values(record.new_value)
    if record.kind == "breaker":
        before = str(old.get("state", "")).removeprefix("BREAKER_STATE_") or "-"
        return f"{before} -> {str(new.get('state', '')).removeprefix('BREAKER_STATE_') or 'deleted'}"
    if not record.new_value:
        return "deleted"
    if not record.old_value:
        return "created"
    if record.kind not in ("policy", "shadow"):
        return "changed"
    changed = changed_fields(record.old_value, record.new_value, record.name)
    return "; ".join(f"{k}: {before} -> {after}" for k, before, after in changed) or "unchanged"


def _values(text: str) -> dict[str, object]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"value": text}
    return value if isinstance(value, dict) else {"value": value}


def _differing(old: dict[str, object], new: dict[str, object]) -> list[str]:
    return [k for k in sorted(set(old) | set(new)) if (k in old, old.get(k)) != (k in new, new.get(k))]


def _show(op: Operator, records: Sequence[pb.AuditRecord], header: Sequence[str], row) -> int:  # type: ignore[no-untyped-def]
    if op.as_json:
        print(json.dumps([json_values(r) for r in records], indent=2))
    else:
        _print_table([row(r) for r in records], header)
    return EXIT_OK


def audit(op: Operator, service: str, after: datetime | None, limit: int = 100) -> int:
    if limit < 1:
        raise CommandError("--limit: must be at least 1", EXIT_BAD_INPUT)
    request = pb.ListAuditRecordsRequest(service=service)
    if after is not None:
        request.since.FromDatetime(after)
    records = _records(op, request, limit)
    header = ("TIME (UTC)", "REVISION", "WHO", "ACTION", "NAME", "CHANGE", "REASON", "WRITTEN BY")
    return _show(
        op,
        records,
        header,
        lambda r: [
            _time(r),
            r.revision,
            r.identity,
            r.action,
            r.name,
            _summary(r),
            r.reason or "-",
            _written_by(r),
        ],
    )


def _written_by(record: pb.AuditRecord) -> str:
    if record.provenance == "verified":
        return "control plane"
    return f"({record.provenance})" if record.provenance else "-"


def policy_history(op: Operator, name: str) -> int:
    versions = op._call(op.stub.ListPolicyHistory, pb.ListPolicyHistoryRequest(service=name)).versions
    if not versions:
        raise CommandError(f"no history of a policy named {name!r} is kept", EXIT_NOT_FOUND)
    header = ("REVISION", "TIME (UTC)", "WHO", "ACTION", "CHANGE", "REASON")
    return _show(
        op,
        versions,
        header,
        lambda r: [
            r.revision,
            _time(r) if r.HasField("time") else "-",
            r.identity or "-",
            r.action or "(etcd revision)",
            _summary(r) if r.identity else "-",
            r.reason or "-",
        ],
    )


def policy_diff(op: Operator, name: str, rev1: int, rev2: int) -> int:
    versions = list(op._call(op.stub.ListPolicyHistory, pb.ListPolicyHistoryRequest(service=name)).versions)
    texts = [_at(versions, rev, name) for rev in (rev1, rev2)]
    old, new = (_values(t) for t in texts)
    differing = _differing(old, new)
    if op.as_json:  # a side where the field is unset has no value: "old" or "new" is left out
        sides = {k: {w: side[k] for w, side in (("old", old), ("new", new)) if k in side} for k in differing}
        print(json.dumps(sides, indent=2))
        return EXIT_OK
    changed = changed_fields(texts[0], texts[1], name)
    for key, before, after in changed:
        print(_safe(f"{key}: {before} -> {after}"))
    if not changed:
        print(f"no difference between revisions {rev1} and {rev2}")
    return EXIT_OK


def _at(versions: list[pb.AuditRecord], revision: int, name: str) -> str:
    earlier = [v for v in versions if v.revision <= revision]
    if not earlier:
        raise CommandError(f"no version of {name!r} at or before revision {revision} is kept", EXIT_NOT_FOUND)
    return earlier[-1].new_value


def policy_rollback(op: Operator, name: str, to: int, expected: int, reason: str) -> int:
    # No --if-revision: the server undoes one change only, the last, and never a rollback.
    request = pb.RollbackPolicyRequest(
        service=name, to_revision=to, expected_revision=expected, reason=reason
    )
    response = op._call(op.stub.RollbackPolicy, request)
    if op.as_json:
        print(json.dumps(json_values(response), indent=2))
    else:
        print(_safe(f"{name}: {response.change.action} back, at revision {response.revision}"))
    return EXIT_OK


def breaker_history(op: Operator, name: str) -> int:
    records = _records(op, pb.ListAuditRecordsRequest(service=name, kind="breaker"))[::-1]
    if not records:
        raise CommandError(f"no change of a breaker named {name!r} is kept", EXIT_NOT_FOUND)
    header = ("TIME (UTC)", "REVISION", "STATE", "WHO", "ACTION", "REASON")
    return _show(
        op,
        records,
        header,
        lambda r: [
            _time(r),
            r.revision,
            _summary(r).rpartition(" -> ")[2],
            r.identity,
            r.action,
            str(_values(r.new_value).get("reason") or r.reason or "-"),
        ],
    )


def config_rollback(op: Operator, to: int, reason: str) -> int:
    request = pb.RollbackConfigRequest(import_revision=to, reason=reason)
    response = op._call(op.stub.RollbackConfig, request)
    if op.as_json:
        print(json.dumps(json_values(response), indent=2))
        return EXIT_OK
    for change in response.changes:
        print(_safe(f"{change.service}: {change.action} back"))
    print(f"undid the import at revision {response.import_revision}; now at revision {response.revision}")
    return EXIT_OK


__all__ = ["EXIT_BAD_INPUT", "add_parsers", "dispatch", "since"]

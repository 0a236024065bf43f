"""Operator commands of shadow mode: ``policies shadow`` and ``policies promote``, and the
side-by-side table ``stats`` prints for services with a candidate policy."""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mission_control.client.config import policy_from_mapping, policy_to_proto
from mission_control.client.errors import ConfigurationError
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .json_values import json_values

if TYPE_CHECKING:
    from .operator import Operator

__all__ = ["SHADOW_ACTIONS", "add_shadow_commands", "print_shadow_stats", "shadow_command"]

SHADOW_ACTIONS = frozenset({"shadow", "promote"})
_GATES = ("rate_limit", "quota", "bulkhead", "breaker")
_STATES = {value: name.removeprefix("BREAKER_STATE_") for name, value in pb.BreakerState.items()}


def add_shadow_commands(po: argparse._SubParsersAction, action: Any) -> None:  # type: ignore[type-arg]
    """``policies shadow`` and ``policies promote`` (``action`` adds one with the
    connection options)."""
    s = action(
        po, "shadow", "try a candidate policy in shadow mode: evaluated by every agent, never enforced"
    )
    s.add_argument("name", help="the service the candidate is for")
    s.add_argument(
        "policy",
        nargs="?",
        help="the candidate: JSON text, or a .json / .toml file with the policy's fields",
    )
    s.add_argument("--clear", action="store_true", help="drop the service's candidate")
    s.add_argument("--reason", default="", help="why, kept in the audit record")
    p = action(po, "promote", "make the service's candidate its enforced policy and drop the candidate")
    p.add_argument("name", help="the service whose candidate to enforce")
    p.add_argument(
        "--revision",
        type=int,
        default=0,
        metavar="REV",
        help="promote only if the enforced policy is still at this revision (exit code 6 if not)",
    )
    p.add_argument(
        "--candidate",
        type=int,
        default=0,
        metavar="REV",
        help="promote only the candidate published at this revision (`policies shadow` says it; else exit 6)",
    )
    p.add_argument("--reason", default="", help="why (required), kept in the audit record")


def read_candidate(name: str, text: str) -> pb.PutShadowPolicyRequest:
    """The request publishing ``text`` (JSON, or a file's path) as ``name``'s candidate.

    Raises:
        ConfigurationError: listing every bad field (or why the text is unreadable).
    """
    stripped = text.strip()
    if stripped.startswith(("{", "[")) or stripped in ("null", "true", "false") or _is_number(stripped):
        data = _parse(stripped, json.loads, "policy")
    else:
        path = Path(text)
        try:
            content = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigurationError("policy", f"neither JSON nor a readable file: {err}") from None
        data = _parse(content, tomllib.loads if path.suffix == ".toml" else json.loads, str(path))
    if not isinstance(data, dict):
        raise ConfigurationError("policy", "must be a table (JSON object) of the policy's fields")
    if data.get("service", name) != name:
        raise ConfigurationError("service", f"is {data['service']!r}, not {name!r}")
    policy = policy_from_mapping({**data, "service": name}, service=name)
    return pb.PutShadowPolicyRequest(policy=policy_to_proto(policy))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return not Path(text).exists()


def _parse(text: str, parse: Any, where: str) -> Any:
    try:
        return parse(text)
    except ValueError as err:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        raise ConfigurationError("policy", f"{where} does not parse: {err}") from None


def shadow_command(op: Operator, args: argparse.Namespace) -> int:
    """Run ``policies shadow`` or ``policies promote``."""
    from .operator import EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_OK, CommandError

    name = args.name
    if args.action == "promote":
        request = pb.PromoteShadowPolicyRequest(
            service=name,
            expected_revision=args.revision,
            reason=args.reason,
            candidate_revision=args.candidate,
        )
        response = op._call(op.stub.PromoteShadowPolicy, request)
        which = f"the candidate at revision {args.candidate}" if args.candidate else "the candidate held"
        _say(op, response, f"{name}: {which} promoted, enforced at revision {response.revision}")
        return EXIT_OK
    if args.clear:
        if args.policy is not None:
            raise CommandError("give either a candidate policy or --clear, not both", EXIT_BAD_INPUT)
        cleared = op._call(
            op.stub.DeleteShadowPolicy, pb.DeleteShadowPolicyRequest(service=name, reason=args.reason)
        )
        if not cleared.deleted:
            raise CommandError(f"{name!r} has no policy in shadow mode", EXIT_NOT_FOUND)
        _say(op, cleared, f"{name}: shadow policy cleared")
        return EXIT_OK
    if args.policy is None:
        raise CommandError("give the candidate policy (JSON or a file), or --clear", EXIT_BAD_INPUT)
    try:
        put = read_candidate(name, args.policy)
    except ConfigurationError as err:
        lines = [f"{f}: {m}" for f, m in err.violations]
        raise CommandError("invalid candidate:\n  " + "\n  ".join(lines), EXIT_BAD_INPUT) from None
    put.reason = args.reason
    stored = op._call(op.stub.PutShadowPolicy, put)
    _say(op, stored, f"{name}: candidate in shadow mode (revision {stored.revision}); agents evaluate it now")
    return EXIT_OK


def _say(op: Operator, response: Any, text: str) -> None:
    print(json.dumps(json_values(response), indent=2) if op.as_json else text)


def print_shadow_stats(rows: Sequence[pb.ShadowServiceStatistics]) -> None:
    """Enforced and shadow, side by side, per service with a candidate."""
    from .operator import _print_table

    if not rows:
        return
    print("shadow mode (enforced | candidate, since the candidate was published):")
    table = []
    for row in rows:
        for gate in _GATES:
            enforced, shadow = row.rejected_by_reason.get(gate, 0), row.shadow_rejected_by_reason.get(gate, 0)
            table.append([row.service, f"rejected by {gate}", enforced, shadow])
        table.append([row.service, "retries", row.retries, row.shadow_retries])
        breaker = f"{_STATES.get(row.shadow_breaker_state, '?')} ({row.shadow_breaker_opens} opens, "
        breaker += f"{row.shadow_breaker_closes} closes)"
        table.append([row.service, "breaker", _STATES.get(row.breaker_state, "?"), breaker])
        table.append([row.service, "calls evaluated", "-", row.calls])
    _print_table(table, ("SERVICE", "WHAT", "ENFORCED", "SHADOW"))

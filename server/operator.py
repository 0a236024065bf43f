"""Operator commands: ``config``, ``breakers``, ``policies``, ``stats``, ``health``.

Every command talks to the control plane over gRPC, prints a table (or JSON with
``--json``) and exits with a code a script can rely on:

====  =====================================================================
0     done
1     something else went wrong
2     bad input (the message names every bad field)
3     the control plane cannot be reached
4     no such breaker or policy
5     the control plane could not store the change (etcd unavailable)
6     changed concurrently: nothing was written, try again
7     not allowed (no or wrong token / certificate)
====  =====================================================================
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mission_control.client.config import (
    ErrorHandlingConfig,
    config_to_proto,
    config_to_toml,
    load_config_file,
    policy_from_proto,
)
from mission_control.client.errors import ConfigurationError, StorageFailure
from mission_control.client.status import error_from_rpc_error
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc

from .json_values import json_values
from .not_read import NOT_READ, NOT_READ_START
from .operator_refused import no_policy, print_refused_values, refused_policy_value
from .operator_shadow import SHADOW_ACTIONS, print_shadow_stats, shadow_command
from .pem import check_ca, check_pair

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_NOT_FOUND, EXIT_NOT_STORED, EXIT_CONFLICT, EXIT_DENIED = 4, 5, 6, 7
EXIT_INTERRUPTED = 130

SERVICE_NAME = "mission_control.resilience.v1.ControlPlaneService"


class CommandError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _safe(value: object) -> str:
    """``value`` as text fit for a terminal: what the server sent may hold newlines or
    escape sequences (a forged line, a cleared screen), shown escaped instead (``\\x1b``)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _state_name(value: int) -> str:
    return pb.BreakerState.Name(value).removeprefix("BREAKER_STATE_")


def _warn_incomplete(incomplete: bool, what: str) -> None:
    if incomplete:
        print(f"warning: {NOT_READ.format(what=f'{what} not listed')}", file=sys.stderr)


def _print_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header], *[[_safe(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _slow_rule(p: Any) -> str:
    """A policy's slow-call rule in a few characters: ``50% > 1s over 10s``."""
    if not p.HasField("slow_call"):
        return "-"
    rule = p.slow_call
    return f"{rule.rate_threshold:.0%} > {rule.duration_threshold_secs:g}s over {rule.window_secs:g}s"


def _wait(p: Any) -> str:
    """A policy's OPEN wait: ``2s`` or, when failed HALF_OPENs wait longer, ``2s x2 to 60s``."""
    first = p.wait_duration_secs
    if p.wait_duration_multiplier <= 1 or p.max_wait_duration_secs <= first:
        return f"{first:g}s"
    return f"{first:g}s x{p.wait_duration_multiplier:g} to {p.max_wait_duration_secs:g}s"


def _when(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _breaker_rows(breakers: Iterable[pb.Breaker]) -> list[list[object]]:
    rows = []
    for b in breakers:
        remaining = b.open_remaining.ToNanoseconds() / 1e9
        left = f"{remaining:.1f}s" if b.state == pb.BREAKER_STATE_OPEN else "-"
        rows.append(
            [
                b.name,
                _state_name(b.state),
                b.consecutive_failures,
                b.failures,
                left,
                _when(b.changed_at),
                b.reason or "-",
            ]
        )
    return rows


_BREAKER_HEADER = (
    "NAME",
    "STATE",
    "CONSECUTIVE",
    "FAILURES",
    "OPEN FOR",
    "CHANGED (UTC)",
    "REASON",
)


class Operator:
    """Runs one command against a control plane."""

    def __init__(
        self,
        server: str,
        as_json: bool,
        timeout: float = 10.0,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.server = server
        self.as_json = as_json
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        if credentials is not None:
            self.channel = grpc.secure_channel(server, credentials)
        else:
            self.channel = grpc.insecure_channel(server)
        self.stub = pb_grpc.ControlPlaneServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as err:
            raise self._explain(err) from None

    def _explain(self, err: grpc.RpcError) -> CommandError:
        code = err.code()  # type: ignore[attr-defined]
        error = error_from_rpc_error(err)
        if isinstance(error, ConfigurationError):
            lines = [_safe(f"{f}: {m}") for f, m in error.violations]
            if len(lines) == 1:
                return CommandError(f"invalid input: {lines[0]}", EXIT_BAD_INPUT)
            return CommandError("invalid input:\n  " + "\n  ".join(lines), EXIT_BAD_INPUT)
        if isinstance(error, StorageFailure):
            if "did not answer" in error.details:  # sent, maybe applied: etcd may have taken it
                return CommandError(
                    _safe(
                        f"outcome unknown: {error.details}; it may have been stored: check with "
                        "`mission-control audit --limit 5` before trying again"
                    ),
                    EXIT_NOT_STORED,
                )
            return CommandError(_safe(f"not stored: {error.details}"), EXIT_NOT_STORED)
        details = err.details() or ""  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE and details.startswith(NOT_READ_START):
            return CommandError(_safe(details), EXIT_FAILED)  # it answered: it is not unreachable
        if code == grpc.StatusCode.UNAVAILABLE and error is None:
            return CommandError(
                f"cannot reach the control plane at {self.server} "
                "(is `mission-control serve` running? use --server HOST:PORT)",
                EXIT_UNREACHABLE,
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CommandError(
                f"the control plane at {self.server} did not answer in time", EXIT_UNREACHABLE
            )
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            detail = _safe(err.details() or code.name)  # type: ignore[attr-defined]
            return CommandError(f"not allowed: {detail} (use --token or a client certificate)", EXIT_DENIED)
        if code == grpc.StatusCode.NOT_FOUND:
            return CommandError(_safe(err.details() or "not found"), EXIT_NOT_FOUND)  # type: ignore[attr-defined]
        if code == grpc.StatusCode.ABORTED:
            return CommandError(_safe(err.details() or "changed concurrently"), EXIT_CONFLICT)  # type: ignore[attr-defined]
        text = error.technical_message if error is not None else (err.details() or code.name)  # type: ignore[attr-defined]
        return CommandError(_safe(text), EXIT_FAILED)

    # -- breakers --------------------------------------------------------------

    def breakers_list(self) -> int:
        response = self._call(self.stub.ListBreakers, pb.ListBreakersRequest())
        _warn_incomplete(response.incomplete, "breakers")
        if self.as_json:
            print(json.dumps([json_values(b) for b in response.breakers], indent=2))
        else:
            _print_table(_breaker_rows(response.breakers), _BREAKER_HEADER)
        return EXIT_OK

    def breakers_get(self, name: str) -> int:
        response = self._call(self.stub.GetBreaker, pb.GetBreakerRequest(name=name))
        if self.as_json:
            print(json.dumps(json_values(response.breaker), indent=2))
        else:
            _print_table(_breaker_rows([response.breaker]), _BREAKER_HEADER)
        return EXIT_OK

    def breakers_set(self, name: str, state: int, reason: str, create: bool = False) -> int:
        request = pb.SetBreakerStateRequest(name=name, state=state, reason=reason, create=create)
        response = self._call(self.stub.SetBreakerState, request)
        if self.as_json:
            print(json.dumps(json_values(response.breaker), indent=2))
        else:
            print(f"{_safe(name)}: {_state_name(response.breaker.state)}")
        return EXIT_OK

    def breakers_watch(self) -> int:
        try:
            for event in self.stub.WatchBreakers(pb.WatchBreakersRequest(), metadata=self.metadata):
                b = event.breaker
                if self.as_json:
                    print(json.dumps(json_values(event)), flush=True)
                else:
                    before = _state_name(event.previous_state) if event.previous_state else "-"
                    after = _state_name(b.state)
                    line = f"{_when(b.changed_at)} UTC  {b.name}  {before} -> {after}  {b.reason}"
                    print(_safe(line), flush=True)
        except grpc.RpcError as err:
            raise self._explain(err) from None
        return EXIT_OK

    # -- policies --------------------------------------------------------------

    def policies_list(self) -> int:
        response = self._call(self.stub.ListPolicies, pb.ListPoliciesRequest())
        _warn_incomplete(response.incomplete, "policies")
        if self.as_json:
            print(json.dumps([json_values(p) for p in response.policies], indent=2))
            return EXIT_OK
        rows = [
            [
                p.service,
                f"{p.timeout_secs:g}s",
                p.max_retries,
                f"{p.failure_threshold}/{p.success_threshold}",
                _wait(p),
                f"{p.rate_limit_requests}/{p.rate_limit_window_secs:g}s",
                p.max_concurrent or "-",
                ",".join(p.fallbacks) or "-",
                _slow_rule(p),
            ]
            for p in response.policies
        ]
        header = (
            "SERVICE",
            "TIMEOUT",
            "RETRIES",
            "TRIP/CLOSE",
            "WAIT",
            "RATE",
            "MAX CONC",
            "FALLBACKS",
            "SLOW CALLS",
        )
        _print_table(rows, header)
        return EXIT_OK

    def policies_get(self, name: str) -> int:
        response = self._call(self.stub.GetPolicy, pb.GetPolicyRequest(service=name))
        if not response.HasField("policy") and response.incomplete:
            raise CommandError(NOT_READ.format(what=f"a policy named {name!r}"), EXIT_FAILED)
        if not response.HasField("policy"):
            raise CommandError(self._no_policy(name), EXIT_NOT_FOUND)
        if self.as_json:
            print(json.dumps(json_values(response), indent=2))
            return EXIT_OK
        print(f"# {_safe(name)}: stored at revision {response.revision}")
        try:
            stats = self._call(self.stub.GetErrorStatistics, pb.GetErrorStatisticsRequest(page_size=1))
        except CommandError as err:  # the policy is shown all the same
            print(f"# (whether etcd holds a newer, refused value is not known: {_safe(err)})")
        else:
            refused = refused_policy_value(stats.statistics, name)
            if refused is not None:
                note = "etcd holds a newer value, refused (this one stays in force)"
                print(f"# {note}: {_safe(refused.error)}")
        policy = policy_from_proto(response.effective)
        print(
            config_to_toml(ErrorHandlingConfig(service_specific={name: policy})).split("\n\n", 1)[1],
            end="",
        )
        return EXIT_OK

    def _no_policy(self, name: str) -> str:
        try:
            stats = self._call(self.stub.GetErrorStatistics, pb.GetErrorStatisticsRequest(page_size=1))
        except CommandError:
            return no_policy(name, None, _safe)
        return no_policy(name, stats.statistics, _safe)

    # -- config ----------------------------------------------------------------

    def config_import(self, path: str, dry_run: bool, prune: bool, reason: str = "") -> int:
        config = _load(path)
        request = pb.ImportConfigRequest(
            config=config_to_proto(config), dry_run=dry_run, prune=prune, reason=reason
        )
        response = self._call(self.stub.ImportConfig, request)
        self._print_changes(response.changes, dry_run)
        if not dry_run and not self.as_json:
            written = [c for c in response.changes if c.action != "unchanged"]
            print(
                f"imported {len(written)} change(s) at revision {response.revision}"
                if written
                else "nothing to change"
            )
        return EXIT_OK

    def _print_changes(self, changes: Sequence[pb.PolicyChange], dry_run: bool) -> None:
        if self.as_json:
            print(json.dumps([json_values(c) for c in changes], indent=2))
            return
        for change in changes:
            mark = {"added": "+", "removed": "-", "changed": "~", "unchanged": "="}[change.action]
            print(_safe(f"{mark} {change.service} ({change.action})"))
            if change.action == "changed":
                before, after = json_values(change.before), json_values(change.after)
                differing = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
                for key in differing:
                    print(f"    {key}: {json.dumps(before.get(key))} -> {json.dumps(after.get(key))}")
                if not differing:
                    print("    replaces a value etcd holds that was refused (the policy in force is kept)")
        if dry_run:
            print("(dry run: nothing written)")

    def config_export(self, path: str | None) -> int:
        response = self._call(self.stub.ListPolicies, pb.ListPoliciesRequest())
        policies = {p.service: policy_from_proto(p) for p in response.policies}
        text = config_to_toml(ErrorHandlingConfig(service_specific=policies))
        if path in (None, "-"):
            print(text, end="")
        else:
            with open(path, "w", encoding="utf-8") as out:
                out.write(text)
        return EXIT_OK

    # -- fleet -----------------------------------------------------------------

    def stats(self) -> int:
        s = self._call(self.stub.GetErrorStatistics, pb.GetErrorStatisticsRequest()).statistics
        if self.as_json:
            print(json.dumps(json_values(s), indent=2))
            return EXIT_OK
        print(f"total errors           {s.total_errors}")
        print(f"circuit breaker opens  {s.circuit_breaker_opens}")
        rate = f"{s.recovery_success_rate:.1f}% ({s.recovery_successes}/{s.recovery_attempts})"
        print(f"recovery success rate  {rate}")
        print(f"calls rejected         {s.calls_rejected}")
        if s.rejections_capped:
            capped = sum(s.rejections_capped.values())
            print(f"rejections capped      {capped} (reported beyond what a report may count; not a fault)")
        print(f"outcomes dropped       {s.outcomes_dropped}")
        ledger = f"{s.outcome_batches_resent} resent, {s.outcome_batches_too_old} too old"
        print(f"batches not recounted  {ledger} ({s.outcome_sessions_held} sessions held)")
        if s.spooled or s.spool_replayed or s.spool_dropped or s.spool_held:
            print(
                f"writes spooled         {s.spooled} ({s.spool_replayed} replayed, {s.spool_dropped} dropped)"
            )
        if s.spool_held:
            print(f"spooled writes held    {s.spool_held} (in the spools' held.log: not made, see README)")
        print(f"config reloads         {s.config_reloads_ok} ok, {s.config_reloads_failed} failed")
        print(f"connected agents       {s.connected_agents}")
        if s.recovery_checks_by_service:
            answers = ", ".join(f"{n} {_safe(a)}" for a, n in sorted(s.recovery_check_answers.items()))
            print(
                f"recovery checks        {sum(s.recovery_checks_by_service.values())} ({answers}); "
                f"{s.recovery_check_half_opens} breakers moved to HALF_OPEN"
            )
        if s.agent_ids_shared:
            shared = ", ".join(s.shared_agent_ids)
            print(f"agent ids in two processes  {s.agent_ids_shared} ({shared})")
        for title, counts in (
            ("errors by service", s.errors_by_service),
            ("errors by agent", s.errors_by_agent),
            ("errors by type", s.errors_by_type),
            ("rejections capped, by agent", s.rejections_capped),
            ("slow calls by service", s.slow_calls_by_service),
            ("recovery checks by service", s.recovery_checks_by_service),
            ("calls to endpoints over the cap, by service", s.endpoints_over_cap_by_service),
            ("endpoint reports refused past the cap, by service", s.endpoint_reports_refused_by_service),
        ):
            if counts:
                print(f"{title}:")
                for key, n in sorted(counts.items(), key=lambda kv: -kv[1]):
                    print(f"  {_safe(key):30} {n}")
        for usage in s.fleet_limits:
            line = (
                f"fleet limit {usage.resource}: {usage.fleet_units:g} per {usage.period_secs:g}s period, "
                f"leased {usage.leased:g}, asked {usage.demanded:g}, used {usage.used:g}, "
                f"{usage.agents} agents"
            )
            if usage.kept_aside or usage.past_horizon:
                line += (
                    f", {usage.kept_aside:g} kept aside for agents without a lease, "
                    f"{usage.past_horizon} past their horizon"
                )
            print(_safe(line))
        for service in s.retry_minimum_withheld:
            print(_safe(f"fleet retry budget {service}: no minimum leased (the fleet is failing)"))
        print_refused_values(s, _safe)
        print_shadow_stats(s.shadow_services)
        return EXIT_OK

    def health(self) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        result = {}
        for service in ("", SERVICE_NAME):
            try:
                status = stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
                ).status
            except grpc.RpcError as err:
                raise self._explain(err) from None
            result[service or "overall"] = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        if self.as_json:
            print(json.dumps(result))
        else:
            print(f"process: {result['overall']}")
            store = "reachable" if result[SERVICE_NAME] == "SERVING" else "UNREACHABLE (serving from memory)"
            print(f"control plane: {result[SERVICE_NAME]} (etcd {store})")
        return EXIT_OK if result[SERVICE_NAME] == "SERVING" else EXIT_NOT_STORED


def _load(path: str) -> ErrorHandlingConfig:
    try:
        return load_config_file(path)
    except ConfigurationError as err:
        lines = [f"{f}: {m}" for f, m in err.violations]
        raise CommandError(f"{path} is invalid:\n  " + "\n  ".join(lines), EXIT_BAD_INPUT) from None


def config_validate(path: str, as_json: bool) -> int:
    """Local pre-flight: no control plane needed, nothing written."""
    try:
        config = load_config_file(path)
    except ConfigurationError as err:
        if as_json:
            print(
                json.dumps(
                    {
                        "valid": False,
                        "violations": [{"field": f, "message": m} for f, m in err.violations],
                    }
                )
            )
        else:
            print(f"{path}: {len(err.violations)} problem(s)", file=sys.stderr)
            for f, m in err.violations:
                print(f"  {f}: {m}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if as_json:
        print(json.dumps({"valid": True, "services": sorted(config.service_specific)}))
    else:
        names = sorted(config.service_specific)
        listed = f"{len(names)} service(s): {', '.join(names)}" if names else "no services: defaults only"
        print(f"{path}: valid ({listed})")
    return EXIT_OK


_FORCE = {
    "force-open": pb.BREAKER_STATE_FORCED_OPEN,
    "force-close": pb.BREAKER_STATE_FORCED_CLOSED,
    "disable": pb.BREAKER_STATE_DISABLED,
    "reset": pb.BREAKER_STATE_CLOSED,
}


def run(args: argparse.Namespace) -> int:
    """Run a parsed operator command; prints errors on one line, returns the exit code."""
    if args.command == "config" and args.action == "validate":
        return config_validate(args.file, args.json)
    try:
        op = Operator(args.server, args.json, token=_token(args), credentials=_credentials(args))
    except (OSError, ValueError) as err:
        print(f"mission-control: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return _dispatch(op, args)
    except CommandError as err:
        print(f"mission-control: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return _interrupted(args)
    finally:
        op.close()


def _interrupted(args: argparse.Namespace) -> int:
    """Ctrl-C: how a watch ends; any other command says so in one line (exit 130), and an
    import that may or may not have been stored says how to tell."""
    action = str(getattr(args, "action", ""))
    if action == "watch":
        return EXIT_OK
    line = "mission-control: interrupted"
    if args.command == "config" and action == "import" and not args.dry_run:
        line += f"; the import may have been stored or not: `mission-control config diff {args.file}` tells"
    print(line, file=sys.stderr)
    return EXIT_INTERRUPTED


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("MISSION_CONTROL_TOKEN") or None


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if not args.tls_ca:
        if args.tls_cert or args.tls_key:
            raise ValueError("--tls-cert/--tls-key need --tls-ca")
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    check_ca(args.tls_ca)
    if args.tls_cert:
        check_pair(args.tls_cert, args.tls_key)
    key = args.tls_key.read_bytes() if args.tls_key else None
    cert = args.tls_cert.read_bytes() if args.tls_cert else None
    return grpc.ssl_channel_credentials(args.tls_ca.read_bytes(), key, cert)


def _dispatch(op: Operator, args: argparse.Namespace) -> int:
    from . import operator_history  # it builds on this module

    done = operator_history.dispatch(op, args)
    if done is not None:
        return done
    command, action = args.command, str(getattr(args, "action", ""))
    if command == "config":
        if action == "import":
            return op.config_import(args.file, args.dry_run, args.prune, args.reason)
        if action == "diff":
            return op.config_import(args.file, True, args.prune)
        return op.config_export(args.file)
    if command == "breakers":
        if action == "list":
            return op.breakers_list()
        if action == "watch":
            return op.breakers_watch()
        if action == "get":
            return op.breakers_get(args.name)
        return op.breakers_set(args.name, _FORCE[action], args.reason, args.create)
    if command == "policies" and action in SHADOW_ACTIONS:
        return shadow_command(op, args)
    if command == "policies":
        return op.policies_list() if action == "list" else op.policies_get(args.name)
    if command == "stats":
        return op.stats()
    return op.health()

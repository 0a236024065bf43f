"""The command line of ``mission-control``: every command, action and option, each with a
sentence of help.

The options that say how to reach the control plane (``--server``, ``--token``, the TLS
files, ``--json``, ``-v``) are accepted before or after the command:
``mission-control --server HOST:PORT health`` and ``mission-control health --server
HOST:PORT`` mean the same; given in both places, the one after the command wins.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path
from typing import NoReturn

from . import operator_history
from .app import DEFAULT_LISTEN, DEFAULT_STATE_DIR
from .control_plane import DEFAULT_PREFIX
from .operator_shadow import add_shadow_commands

__all__ = ["build_parser", "parse"]

#: (flags, dest, help) of the options accepted before or after an operator command.
_CONNECTION: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("--server",), "server", "control plane HOST:PORT (default $MISSION_CONTROL_SERVER or {server})"),
    (("--token",), "token", "admin bearer token for changes (default $MISSION_CONTROL_TOKEN)"),
    (("--tls-ca",), "tls_ca", "CA certificate (PEM) of the control plane: connect with TLS"),
    (("--tls-cert",), "tls_cert", "client certificate (PEM) for mutual TLS; needs --tls-ca"),
    (("--tls-key",), "tls_key", "client private key (PEM) for mutual TLS; needs --tls-ca"),
)
_FLAGS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("--json",), "json", "print JSON instead of a table (numbers as numbers, zeros kept)"),
    (("-v", "--verbose"), "verbose", "log debug messages to stderr"),
)
_GLOBAL = "global_"


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad command line said in one line (no usage block above it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mission-control: {message} (`{self.prog} --help` lists the options)\n")


def host_port(text: str, *, lowest: int = 0) -> str:
    """``text`` when it is HOST:PORT (an IPv6 host in brackets, the port 0-65535, or from
    ``lowest``); raises ArgumentTypeError saying what is wrong."""
    scheme, slashes, rest = text.partition("://")
    if slashes:  # TLS is chosen by its own options, never by a URL scheme
        raise argparse.ArgumentTypeError(f"{text!r}: no {scheme}:// is wanted, give HOST:PORT: {rest!r}")
    host, colon, port = text.rpartition(":")
    if not colon or not host or not (port.isascii() and port.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    if not lowest <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be {lowest} to 65535")
    if host.startswith("[") or host.endswith("]"):
        try:
            if not (host.startswith("[") and host.endswith("]")):
                raise ValueError(host)
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {host} is not an IPv6 address in brackets") from None
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: an IPv6 address goes in brackets: [{host}]:{port}")
    return text


def _peer(text: str) -> str:
    """HOST:PORT of something to connect to: port 0 is no port there."""
    return host_port(text, lowest=1)


def _endpoints(text: str) -> list[str]:
    items = [e.strip() for e in text.split(",") if e.strip()]
    for item in items:
        _peer(item)
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} names no HOST:PORT")
    return items


def _add_connection(parser: argparse.ArgumentParser, prefix: str, server: str, with_server: bool) -> None:
    """The connection options; ``prefix`` keeps the ones given before the command apart."""
    group = parser.add_argument_group("reaching the control plane (also accepted before the command)")
    for flags, dest, text in _CONNECTION if with_server else ():
        kind = Path if dest.startswith("tls_") else str
        metavar = {"server": "HOST:PORT", "token": "TOKEN"}.get(dest, "PEM_FILE")
        group.add_argument(
            *flags,
            dest=prefix + dest,
            type=kind,
            metavar=metavar,
            default=argparse.SUPPRESS,
            help=text.format(server=server),
        )
    for flags, dest, text in _FLAGS:
        group.add_argument(
            *flags, dest=prefix + dest, action="store_true", default=argparse.SUPPRESS, help=text
        )


def _sub(commands: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    return commands.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")  # type: ignore[no-any-return]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    server = DEFAULT_LISTEN  # for the help; parse() reads $MISSION_CONTROL_SERVER
    parser = _Parser(
        prog="mission-control",
        description="Resilience control plane for fleets of AI agents. "
        "Run `mission-control COMMAND --help` for a command's actions and options.",
        epilog="Exit codes: 0 done, 1 other failure, 2 bad input, 3 control plane unreachable, "
        "4 no such breaker or policy, 5 not confirmed (etcd unavailable), 6 changed concurrently "
        "(nothing written), 7 not allowed, 130 interrupted.",
    )
    _add_connection(parser, _GLOBAL, server, with_server=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(_sub(commands, "serve", "run the control plane (with a private etcd unless --etcd is given)"))
    _add_demo(_sub(commands, "demo", "run the fleet scenario live and print the seed's KPIs"))
    _add_status(_sub(commands, "status", "whether a serve uses a state folder, and its etcd's address"))
    _add_operator_commands(commands, server)
    return parser


def _add_serve(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--listen",
        type=host_port,
        default=DEFAULT_LISTEN,
        help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN})",
    )
    run.add_argument(
        "--etcd",
        type=_endpoints,
        default=[],
        metavar="HOST:PORT,...",
        help="etcd members to use, by address or DNS name (default: start a private local etcd)",
    )
    run.add_argument(
        "--etcd-prefix", default=DEFAULT_PREFIX, help=f"etcd key prefix (default {DEFAULT_PREFIX})"
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        default=Path(DEFAULT_STATE_DIR),
        help="folder of the private etcd's data, ports and lock (default .state)",
    )
    run.add_argument("--instance-id", default="", help="name of this replica (default: random)")
    run.add_argument(
        "--advertise",
        type=_peer,
        default=None,
        help="HOST:PORT other replicas use to reach this one (default --listen)",
    )
    run.add_argument(
        "--max-agents", type=int, default=10_000, help="most agents connected at once (default 10000)"
    )
    run.add_argument(
        "--max-agents-per-peer",
        type=int,
        default=64,
        help="most agent ids connected from one address, when agents are not authenticated (default 64)",
    )
    run.add_argument(
        "--max-summaries-per-sec",
        type=float,
        default=1024.0,
        help="outcome summaries one agent may send per second; the rest are refused (default 1024)",
    )
    run.add_argument(
        "--max-unnamed-services",
        type=int,
        default=1024,
        help="most breakers of services no policy names, which agents choose (default 1024)",
    )
    run.add_argument(
        "--max-unnamed-services-per-agent",
        type=int,
        default=64,
        help="most such breakers one agent may cause (default 64)",
    )
    run.add_argument(
        "--http",
        type=host_port,
        metavar="HOST:PORT",
        default=None,
        help="serve the dashboard, /metrics, /healthz and /readyz on HOST:PORT "
        "(default: off; `make run` uses 127.0.0.1:8080)",
    )
    run.add_argument(
        "--audit-max-records",
        type=int,
        default=1000,
        help="audit records kept of policy changes, and as many of breaker changes (default 1000)",
    )
    run.add_argument(
        "--audit-max-age-days", type=float, default=30.0, help="audit records older are deleted (default 30)"
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages"
    )
    sec = run.add_argument_group("security")
    sec.add_argument("--tls-cert", type=Path, help="server certificate (PEM); enables TLS with --tls-key")
    sec.add_argument("--tls-key", type=Path, help="server private key (PEM) matching --tls-cert")
    sec.add_argument(
        "--tls-client-ca", type=Path, help="CA of client certificates (PEM): requires mutual TLS"
    )
    sec.add_argument(
        "--admin-tokens-file",
        type=Path,
        help="file of tokens allowed to write, one per line ('NAME TOKEN' names it in the audit)",
    )
    sec.add_argument(
        "--admin-identity",
        action="append",
        default=[],
        help="client-certificate identity (SAN or CN) allowed to write; repeatable",
    )
    sec.add_argument(
        "--replica-identity",
        action="append",
        default=[],
        help="certificate identity of a replica (or a prefix ending in '*') that may relay; repeatable",
    )
    sec.add_argument(
        "--tls-relay-ca",
        type=Path,
        help="CA of the other replicas' server certificates, for relaying (default --tls-client-ca)",
    )
    sec.add_argument(
        "--agent-tokens-file",
        type=Path,
        help="file of '<agent_id> <token>' lines: agents must present theirs",
    )
    sec.add_argument("--etcd-ca", type=Path, help="CA of the etcd server certificates (PEM)")
    sec.add_argument("--etcd-cert", type=Path, help="client certificate for etcd (PEM)")
    sec.add_argument("--etcd-key", type=Path, help="client private key for etcd (PEM)")
    sec.add_argument("--etcd-user", help="etcd user name (needs a password)")
    sec.add_argument(
        "--etcd-password-file",
        type=Path,
        help="file holding the etcd password (or set MISSION_CONTROL_ETCD_PASSWORD)",
    )


def _add_demo(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    demo.add_argument(
        "--seed", type=int, default=1, help="varies the scenario's timing, repeatably (default 1)"
    )
    demo.add_argument(
        "--etcd", type=_peer, default=None, help="an etcd HOST:PORT to use (default: a private one)"
    )
    demo.add_argument(
        "--http",
        type=host_port,
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="the dashboard's address (default: a free port, printed at start)",
    )
    demo.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="also print the KPIs as JSON"
    )
    demo.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages"
    )


def _add_status(status: argparse.ArgumentParser) -> None:
    status.add_argument(
        "--state-dir",
        type=Path,
        default=Path(DEFAULT_STATE_DIR),
        help="the state folder given to serve (default .state)",
    )
    status.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the status as JSON"
    )


def _add_operator_commands(commands: argparse._SubParsersAction, server: str) -> None:  # type: ignore[type-arg]
    def action(actions: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:  # type: ignore[type-arg]
        p = _sub(actions, name, text)
        _add_connection(p, "", server, with_server=True)
        return p

    config = _sub(commands, "config", "validate, import, export or diff a TOML config of policies")
    cfg = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    v = _sub(cfg, "validate", "check a file locally and report every problem at once; nothing is written")
    v.add_argument("file", help="the TOML file to check")
    _add_connection(v, "", server, with_server=False)
    i = action(cfg, "import", "validate a file, then write all its policies in one transaction")
    i.add_argument("file", help="the TOML file to import")
    i.add_argument("--dry-run", action="store_true", help="only show what would change; write nothing")
    i.add_argument("--prune", action="store_true", help="also remove stored policies the file does not name")
    i.add_argument("--reason", default="", help="why, kept in the audit records")
    d = action(cfg, "diff", "show what importing a file would change; write nothing")
    d.add_argument("file", help="the TOML file to compare with the live policies")
    d.add_argument(
        "--prune", action="store_true", help="also show the stored policies an import would remove"
    )
    e = action(cfg, "export", "write the live policies as TOML")
    e.add_argument("file", nargs="?", default=None, help="where to write (default or '-': standard output)")

    breakers = _sub(commands, "breakers", "inspect and steer circuit breakers")
    br = breakers.add_subparsers(dest="action", required=True, metavar="ACTION")
    action(br, "list", "every breaker with its state, counters and last change (UTC)")
    action(br, "watch", "print each breaker change as it happens, until interrupted")
    for name, text in (
        ("get", "one breaker with its state, counters and last change (UTC)"),
        ("force-open", "fail every call of a service fast until reset"),
        ("force-close", "let every call of a service through until reset"),
        ("disable", "run a service with no breaker at all until reset"),
        ("reset", "put a breaker back to CLOSED with its counters cleared"),
    ):
        p = action(br, name, text)
        p.add_argument("name", help="the breaker's name (its service)")
        if name == "get":
            continue
        required = " (required)" if name != "reset" else ""
        p.add_argument("--reason", default="", help=f"why{required}: shown with the breaker and in the audit")
        p.add_argument(
            "--create",
            action="store_true",
            help="make the breaker although no policy names it and it was never seen",
        )

    policies = _sub(commands, "policies", "inspect the policies stored in etcd")
    po = policies.add_subparsers(dest="action", required=True, metavar="ACTION")
    action(po, "list", "every stored policy as a table")
    g = action(po, "get", "one stored policy as TOML (exit code 4 when none is stored)")
    g.add_argument("name", help="the service whose policy to show")
    add_shadow_commands(po, action)

    operator_history.add_parsers(action, commands, cfg, br, po)

    action(commands, "stats", "error statistics over the fleet")
    action(commands, "health", "whether the control plane serves and reaches etcd (exit code 5 when not)")


#: The options these commands accept before their name (the rest are the operator commands').
_BEFORE = {"serve": {"verbose"}, "demo": {"verbose", "json"}, "status": {"verbose", "json"}}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; the options given before the command are merged in."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {k.removeprefix(_GLOBAL): v for k, v in vars(args).items() if k.startswith(_GLOBAL)}
    for key in list(vars(args)):
        if key.startswith(_GLOBAL):
            delattr(args, key)
    if args.command in _BEFORE:
        wrong = [k for k in given if k not in _BEFORE[args.command]]
        if wrong:
            flags = ", ".join("--" + k.replace("_", "-") for k in sorted(wrong))
            parser.error(f"{flags} before '{args.command}' applies only to the operator commands")
    for key, value in given.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    defaults: dict[str, object] = {"json": False, "verbose": False, "token": None, "tls_ca": None}
    if args.command not in _BEFORE:
        server = os.environ.get("MISSION_CONTROL_SERVER", DEFAULT_LISTEN)
        defaults |= {"server": server, "tls_cert": None, "tls_key": None}
    for key, value in defaults.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    return args

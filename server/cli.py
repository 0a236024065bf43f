"""The ``mission-control`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import operator
from .app import DEFAULT_LISTEN, DEFAULT_STATE_DIR, EtcdAccess, ServeOptions, TlsFiles, serve
from .auth import read_token_lines
from .control_plane import DEFAULT_PREFIX
from .etcd_process import EtcdUnavailable
from .service import Limits
from .store import StoreUnavailable


def _endpoints(text: str) -> list[str]:
    items = [e.strip() for e in text.split(",") if e.strip()]
    for item in items:
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r} is not HOST:PORT")
    return items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mission-control",
        description="Resilience control plane for fleets of AI agents.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("serve", help="run the control plane")
    run.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    run.add_argument(
        "--etcd",
        type=_endpoints,
        default=[],
        metavar="HOST:PORT,...",
        help="etcd cluster to use (default: start a private local etcd)",
    )
    run.add_argument("--etcd-prefix", default=DEFAULT_PREFIX, help=f"key prefix (default {DEFAULT_PREFIX})")
    run.add_argument(
        "--state-dir",
        type=Path,
        default=Path(DEFAULT_STATE_DIR),
        help="where the embedded etcd keeps its data (default .state)",
    )
    run.add_argument("--instance-id", default="", help="name of this replica (default random)")
    run.add_argument(
        "--advertise", default=None, help="HOST:PORT other replicas use to reach this one (default: --listen)"
    )
    run.add_argument(
        "--http",
        metavar="HOST:PORT",
        default=None,
        help="serve the dashboard, /metrics, /healthz and /readyz on HOST:PORT "
        "(default: off; `make run` uses 127.0.0.1:8080)",
    )
    sec = run.add_argument_group("security")
    sec.add_argument("--tls-cert", type=Path, help="server certificate (PEM); enables TLS")
    sec.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    sec.add_argument("--tls-client-ca", type=Path, help="CA of client certificates: requires mutual TLS")
    sec.add_argument("--admin-tokens-file", type=Path, help="tokens allowed to write, one per line")
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
        help="CA of the other replicas' server certificates, for relaying (default: --tls-client-ca)",
    )
    sec.add_argument(
        "--agent-tokens-file", type=Path, help="'<agent_id> <token>' per line: agents must present theirs"
    )
    sec.add_argument("--etcd-ca", type=Path, help="CA of the etcd server certificates (PEM)")
    sec.add_argument("--etcd-cert", type=Path, help="client certificate for etcd (PEM)")
    sec.add_argument("--etcd-key", type=Path, help="client key for etcd (PEM)")
    sec.add_argument("--etcd-user", help="etcd user")
    sec.add_argument(
        "--etcd-password-file",
        type=Path,
        help="file holding the etcd password (or set MISSION_CONTROL_ETCD_PASSWORD)",
    )
    sec.add_argument("--max-agents", type=int, default=10_000, help="most agents connected at once")
    sec.add_argument(
        "--max-agents-per-peer",
        type=int,
        default=64,
        help="most agent ids connected from one address, when agents are not authenticated",
    )
    sec.add_argument(
        "--max-unnamed-services",
        type=int,
        default=1024,
        help="most breakers of services no policy names (agents choose those names)",
    )
    sec.add_argument(
        "--max-unnamed-services-per-agent",
        type=int,
        default=64,
        help="most such breakers one agent may cause",
    )
    demo = commands.add_parser("demo", help="run the fleet scenario live and print the seed's KPIs")
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    demo.add_argument("--seed", type=int, default=1, help="varies the scenario's timing, repeatably")
    demo.add_argument("--etcd", default=None, help="an etcd to use (default: a private one)")
    demo.add_argument("--json", action="store_true", help="also print the KPIs as JSON")
    demo.add_argument(
        "--http",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="the dashboard's address (default: a free port)",
    )
    server = os.environ.get("MISSION_CONTROL_SERVER", DEFAULT_LISTEN)
    operator.add_commands(commands, server)
    return parser


def _serve_options(args: argparse.Namespace) -> ServeOptions:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    password = os.environ.get("MISSION_CONTROL_ETCD_PASSWORD")
    if args.etcd_password_file:
        password = args.etcd_password_file.read_text(encoding="utf-8").strip()
    if args.etcd_user and password is None:
        raise ValueError("--etcd-user needs --etcd-password-file or MISSION_CONTROL_ETCD_PASSWORD")
    for path in (
        args.tls_cert,
        args.tls_key,
        args.tls_client_ca,
        args.etcd_ca,
        args.etcd_cert,
        args.etcd_key,
        args.admin_tokens_file,
        args.agent_tokens_file,
        args.tls_relay_ca,
    ):
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file")
    for path in (args.admin_tokens_file, args.agent_tokens_file):
        if path is not None and not read_token_lines(path):
            raise ValueError(f"{path}: no tokens in it (an empty file would leave access open)")
    return ServeOptions(
        listen=args.listen,
        etcd=args.etcd,
        prefix=args.etcd_prefix,
        state_dir=args.state_dir,
        instance_id=args.instance_id,
        tls=TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca, args.tls_relay_ca)
        if args.tls_cert
        else None,
        etcd_access=EtcdAccess(args.etcd_ca, args.etcd_cert, args.etcd_key, args.etcd_user, password),
        admin_tokens_file=args.admin_tokens_file,
        admin_identities=tuple(args.admin_identity),
        replica_identities=tuple(args.replica_identity),
        agent_tokens_file=args.agent_tokens_file,
        limits=Limits(
            max_agents=args.max_agents,
            max_agents_per_peer=args.max_agents_per_peer,
            max_unnamed_services=args.max_unnamed_services,
            max_unnamed_services_per_agent=args.max_unnamed_services_per_agent,
        ),
        advertise=args.advertise,
        http=args.http,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        try:
            options = _serve_options(args)
        except (OSError, ValueError) as err:
            print(f"mission-control: {err}", file=sys.stderr)
            return 2
        try:
            asyncio.run(serve(options))
        except (EtcdUnavailable, StoreUnavailable) as err:
            print(f"mission-control: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            print(f"mission-control: {err}", file=sys.stderr)
            return 2
        return 0
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if args.command == "demo":
        from .demo import run_demo

        try:
            results = run_demo(args.duration, args.seed, etcd=args.etcd, http=args.http)
        except (EtcdUnavailable, OSError, AssertionError) as err:
            print(f"mission-control: demo failed: {err}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(results))
        return 0
    return operator.run(args)


if __name__ == "__main__":
    sys.exit(main())

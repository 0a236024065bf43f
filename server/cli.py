"""The ``mission-control`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from mission_control.client.policy import name_problem

from . import operator
from .app import EtcdAccess, ServeOptions, TlsFiles
from .audit import Retention
from .auth import AccessPolicy, read_token_lines
from .cli_args import parse
from .etcd_process import EtcdUnavailable
from .pem import check_ca, check_pair
from .service import Limits
from .serving import Interrupted, serve
from .state_dir import read_status
from .store import StoreUnavailable

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def _serve_options(args: argparse.Namespace) -> ServeOptions:
    if not args.etcd and args.state_dir.exists() and not args.state_dir.is_dir():
        raise ValueError(f"--state-dir {args.state_dir}: a file, not a folder")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.audit_max_records < 1 or not args.audit_max_age_days > 0:
        raise ValueError("--audit-max-records must be >= 1 and --audit-max-age-days > 0")
    if args.tls_client_ca and not args.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    password = os.environ.get("MISSION_CONTROL_ETCD_PASSWORD")
    instance_problem = args.instance_id and name_problem(args.instance_id)
    if instance_problem:
        raise ValueError(
            f"--instance-id {args.instance_id!r} {instance_problem} (it names this replica's keys)"
        )
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
    if args.admin_tokens_file is not None:  # a token or a name listed twice: said here, in one line
        AccessPolicy.build(listen="127.0.0.1:0", admin_tokens_file=args.admin_tokens_file)
    if args.tls_cert:
        check_pair(args.tls_cert, args.tls_key)
    for ca in (args.tls_client_ca, args.tls_relay_ca, args.etcd_ca):
        if ca is not None:
            check_ca(ca)
    if args.etcd_cert or args.etcd_key:
        if not (args.etcd_cert and args.etcd_key and args.etcd_ca):
            raise ValueError("--etcd-cert and --etcd-key go together, with --etcd-ca")
        check_pair(args.etcd_cert, args.etcd_key)
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
            max_summaries_per_sec=args.max_summaries_per_sec,
            max_unnamed_services=args.max_unnamed_services,
            max_unnamed_services_per_agent=args.max_unnamed_services_per_agent,
        ),
        advertise=args.advertise,
        http=args.http,
        retention=Retention(args.audit_max_records, args.audit_max_age_days * 86400.0),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr and an exit code."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe surfaces here, not at exit
        return code
    except KeyboardInterrupt:
        print("mission-control: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as a shell tool does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    given = list(argv) if argv is not None else sys.argv[1:]
    for arg in given:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes the locale could not decode, kept as surrogates
            shown = arg.encode("utf-8", "backslashreplace").decode()
            print(f"mission-control: an argument is not UTF-8 text: {shown}", file=sys.stderr)
            return 2
    args = parse(given)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        return _serve(args)
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if args.command == "demo":
        return _demo(args)
    if args.command == "status":
        return _status(args)
    return operator.run(args)


def _serve(args: argparse.Namespace) -> int:
    try:
        options = _serve_options(args)
    except (OSError, ValueError) as err:
        print(f"mission-control: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(options))
    except (EtcdUnavailable, StoreUnavailable, OSError) as err:
        print(f"mission-control: {err}", file=sys.stderr)
        return 2
    except Interrupted:
        print("mission-control: interrupted during startup; stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _status(args: argparse.Namespace) -> int:
    status = read_status(args.state_dir)
    if args.json:
        print(json.dumps(status.as_json()))
    else:
        print("\n".join(status.lines()))
    return 0 if status.ok else operator.EXIT_UNREACHABLE


def _demo(args: argparse.Namespace) -> int:
    from .app import DASHBOARD_CANNOT_LISTEN, bind_problem
    from .demo import run_demo

    problem = bind_problem(args.http, "--http")
    if problem is not None:
        print(f"mission-control: {DASHBOARD_CANNOT_LISTEN} {args.http}: {problem}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stop the demo's processes on these too
        signal.signal(sig, signal.default_int_handler)
    try:
        results = run_demo(args.duration, args.seed, etcd=args.etcd, http=args.http)
    except (EtcdUnavailable, OSError, AssertionError) as err:
        print(f"mission-control: demo failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mission-control: demo interrupted; its processes and etcd are stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

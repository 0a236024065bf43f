"""The ``mission-control`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import operator
from .app import DEFAULT_LISTEN, DEFAULT_STATE_DIR, ServeOptions, serve
from .control_plane import DEFAULT_PREFIX
from .etcd_process import EtcdUnavailable


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
    server = os.environ.get("MISSION_CONTROL_SERVER", DEFAULT_LISTEN)
    operator.add_commands(commands, server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        options = ServeOptions(
            listen=args.listen,
            etcd=args.etcd,
            prefix=args.etcd_prefix,
            state_dir=args.state_dir,
            instance_id=args.instance_id,
        )
        try:
            asyncio.run(serve(options))
        except EtcdUnavailable as err:
            print(f"mission-control: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            print(f"mission-control: {err}", file=sys.stderr)
            return 2
        return 0
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    return operator.run(args)


if __name__ == "__main__":
    sys.exit(main())

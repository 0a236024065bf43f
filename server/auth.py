"""Who may do what: reads are open; writes need an authorised identity; agents report
only under their own name.

Identities come from a bearer token (``authorization: Bearer <token>`` metadata, compared
in constant time against every configured token) or from a verified client certificate
(mutual TLS; its subject alternative names and common name). Operators are listed in an
admin tokens file and/or by certificate identity; agents optionally in an agent tokens
file (``<agent_id> <token>`` per line), which then binds each token to one agent id.

With no admin configured, writes are allowed only when the server listens on loopback —
the development default; anywhere else they are refused until an admin is configured.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio

_log = logging.getLogger("mission_control.server.auth")

#: Agent ids a replica relays under (``replica.<instance>``); no agent may claim one.
REPLICA_PREFIX = "replica."
WRITE_METHODS = frozenset(
    {"SetBreakerState", "PutPolicy", "DeletePolicy", "ImportConfig", "RollbackPolicy", "RollbackConfig"}
)


def read_token_lines(path: str | Path) -> list[str]:
    """Non-empty, non-comment lines of a secrets file (the values are never logged)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_peer(peer: str) -> bool:
    """Whether a gRPC peer ("ipv4:127.0.0.1[:port]", "ipv6:[::1]:port", URL-quoted or not)
    is on this machine."""
    kind, _, address = urllib.parse.unquote(peer).partition(":")
    if kind == "ipv6":
        host = address[1:].split("]", 1)[0] if address.startswith("[") else address
    elif kind == "ipv4":
        host = address.split(":", 1)[0]
    else:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


def identity_matches(name: str, pattern: str) -> bool:
    """The documented rule: ``pattern`` names ``name`` exactly, or is a prefix ending in "*"
    (no other wildcard: "?" and "[" are ordinary characters)."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _named_token(line: str) -> tuple[str, str]:
    """``NAME TOKEN`` or just ``TOKEN`` (a token holds no spaces)."""
    name, _, token = line.partition(" ")
    return (name, token.strip()) if token.strip() else ("", name)


def _matches(token: bytes, candidates: Iterable[bytes]) -> bool:
    # Every candidate is compared, so the time taken does not tell which one matched.
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(token, candidate)
    return found


@dataclass
class AccessPolicy:
    admin_tokens: tuple[bytes, ...] = ()
    admin_identities: frozenset[str] = frozenset()
    agent_tokens: dict[str, bytes] = field(default_factory=dict)  # agent id -> token
    open_writes: bool = True
    #: Certificate identities of replicas (exact, or a prefix ending in "*"): they relay
    #: their agents' outcomes, and may not write.
    replica_identities: frozenset[str] = frozenset()
    #: The names of ``admin_tokens`` (same order; "" when a line gives none).
    admin_token_names: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        listen: str,
        admin_tokens_file: str | Path | None = None,
        admin_identities: Iterable[str] = (),
        agent_tokens_file: str | Path | None = None,
        replica_identities: Iterable[str] = (),
    ) -> AccessPolicy:
        named = (
            [_named_token(line) for line in read_token_lines(admin_tokens_file)] if admin_tokens_file else []
        )
        admin = tuple(token.encode() for _, token in named)
        if len(set(admin)) != len(admin):
            raise ValueError(
                f"{admin_tokens_file}: a token is listed more than once (each must name one admin)"
            )
        names = [name for name, _ in named if name]
        if len(set(names)) != len(names):
            raise ValueError(
                f"{admin_tokens_file}: a name is given to more than one token (audit records would mix them)"
            )
        if admin_tokens_file and not admin:
            raise ValueError(f"{admin_tokens_file}: no tokens in it (an empty file would leave writes open)")
        agents: dict[str, bytes] = {}
        if agent_tokens_file:
            for line in read_token_lines(agent_tokens_file):
                agent_id, _, token = line.partition(" ")
                if not token.strip():
                    raise ValueError(f"{agent_tokens_file}: each line must be '<agent_id> <token>'")
                agents[agent_id] = token.strip().encode()
            if not agents:
                raise ValueError(f"{agent_tokens_file}: no tokens in it (agents would be unauthenticated)")
        identities = frozenset(i for i in admin_identities if i)
        configured = bool(admin or identities)
        policy = cls(
            admin,
            identities,
            agents,
            open_writes=not configured and is_loopback(listen),
            replica_identities=frozenset(i for i in replica_identities if i),
            admin_token_names=tuple(name for name, _ in named),
        )
        if not configured and not policy.open_writes:
            _log.warning(
                "no admin token or identity configured and not on loopback: writes are refused "
                "(use --admin-tokens-file or --admin-identity)"
            )
        return policy

    # -- identities ------------------------------------------------------------

    @staticmethod
    def bearer(context: grpc.aio.ServicerContext) -> bytes | None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else str(value)
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return token.strip().encode()
        return None

    @staticmethod
    def certificate_identities(context: grpc.aio.ServicerContext) -> set[str]:
        try:
            auth = context.auth_context() or {}
        except Exception:
            return set()
        names: set[str] = set()
        for key in ("x509_subject_alternative_name", "x509_common_name"):
            names.update(v.decode(errors="replace") for v in auth.get(key, ()))
        return names

    # -- checks ----------------------------------------------------------------

    async def authorize_write(self, context: grpc.aio.ServicerContext, method: str) -> str:
        """The caller's identity, for the audit record (``token:<name>``, ``cert:<identity>``,
        or ``local`` when writes are open); aborts with UNAUTHENTICATED / PERMISSION_DENIED
        unless the caller may write."""
        token = self.bearer(context)
        if token is not None and _matches(token, self.admin_tokens):
            return "token:" + self.token_name(token)
        if token is not None:
            # A wrong token is refused even beside an admin certificate: whoever sent it
            # believed it was what let them in, and the record would name someone else.
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"this token may not call {method}")
        certified = sorted(self.admin_identities & self.certificate_identities(context))
        if certified:
            return "cert:" + certified[0]
        if self.open_writes and token is None:
            return "local"
        if token is None and not self.certificate_identities(context):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"{method} needs an admin token or certificate"
            )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"this identity may not call {method}")

    def token_name(self, token: bytes) -> str:
        """The name an admin token has in its file (``NAME TOKEN`` lines), else a short
        fingerprint of it (never the token itself)."""
        for candidate, name in zip(self.admin_tokens, self.admin_token_names, strict=False):
            if name and hmac.compare_digest(token, candidate):
                return name
        return "sha256:" + hashlib.sha256(token).hexdigest()[:12]

    def is_admin(self, context: grpc.aio.ServicerContext) -> bool:
        """Whether the caller proved an admin identity (replicas relaying hold one)."""
        token = self.bearer(context)
        if token is not None and _matches(token, self.admin_tokens):
            return True
        return bool(self.admin_identities & self.certificate_identities(context))

    def is_replica(self, context: grpc.aio.ServicerContext) -> bool:
        """Whether the caller's certificate names one of the replicas."""
        names = self.certificate_identities(context)
        return any(identity_matches(name, pattern) for name in names for pattern in self.replica_identities)

    def is_loopback_replica(self, agent_id: str, peer: str) -> bool:
        """A replica's relay (``replica.<id>``) on the development default: no admin is
        configured, writes are open to loopback clients, and the peer is on loopback. Such a
        client could write policies anyway, so trusting its relay grants it nothing more."""
        return self.open_writes and agent_id.startswith(REPLICA_PREFIX) and is_loopback_peer(peer)

    async def authorize_agent(self, context: grpc.aio.ServicerContext, agent_id: str) -> None:
        """An agent reports only under its own name (when agents are authenticated)."""
        identities = self.certificate_identities(context)
        if self.is_replica(context):
            return  # a replica relays for its agents under its own stream
        if identities and agent_id not in identities and not (self.admin_identities & identities):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "agent_id does not match the client certificate"
            )
        token = self.bearer(context)
        if token is not None and _matches(token, self.admin_tokens):
            return  # admins (and replicas, which share their tokens) may report for anyone
        if not self.agent_tokens:
            return
        if token is None:
            if identities:
                return  # authenticated by certificate instead
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "agents must present their token")
        expected = self.agent_tokens.get(agent_id, b"")
        if not (_matches(token, [expected]) and expected):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "this token does not belong to that agent_id"
            )

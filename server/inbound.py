"""Checks on what an agent sends before anything keeps it: a hello's size and fields, a
demand's numbers, and who the peer is (for the per-address limit)."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection

from mission_control.client.policy import breaker_name_problem, name_problem
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .relayed_agents import MAX_RELAYED_AGENTS, MAX_RELAYED_KEY_CHARS

#: A hello is small: agent id, session id, the services it calls, a few labels.
MAX_HELLO_BYTES = 64 * 1024
MAX_HELLO_SERVICES = 1024
MAX_LABELS = 32
MAX_LABEL_LENGTH = 256
MAX_SESSION_ID_LENGTH = 128
#: An agent process's instance id (AgentHello.instance).
_INSTANCE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
#: A demand larger than this is no demand an agent can have in one lease period.
MAX_DEMAND_UNITS = 1e12


def hello_problem(hello: pb.AgentHello) -> tuple[str, str] | None:
    """(field, why) when the hello breaks a bound, else None. Never echoes a value."""
    if len(hello.relayed_agents) > MAX_RELAYED_AGENTS:
        return "hello.relayed_agents", f"at most {MAX_RELAYED_AGENTS} keys"
    if any(len(key) > MAX_RELAYED_KEY_CHARS for key in hello.relayed_agents):
        return "hello.relayed_agents", f"keys of at most {MAX_RELAYED_KEY_CHARS} characters"
    # (a relay's keys are bounded above; the rest of a hello is small)
    relayed = sum(len(key.encode()) + 3 for key in hello.relayed_agents)
    if hello.ByteSize() - relayed > MAX_HELLO_BYTES:
        return "hello", f"must be at most {MAX_HELLO_BYTES} bytes"
    problem = name_problem(hello.agent_id)
    if problem:
        return "hello.agent_id", problem
    if len(hello.session_id) > MAX_SESSION_ID_LENGTH:
        return "hello.session_id", f"must be at most {MAX_SESSION_ID_LENGTH} characters"
    if len(hello.outcome_series) > MAX_SESSION_ID_LENGTH:
        return "hello.outcome_series", f"must be at most {MAX_SESSION_ID_LENGTH} characters"
    if hello.instance and not _INSTANCE.fullmatch(hello.instance):
        return "hello.instance", "must be 1-64 characters of letters, digits, '_' or '-'"
    if len(hello.services) > MAX_HELLO_SERVICES:
        return "hello.services", f"at most {MAX_HELLO_SERVICES} services"
    for i, service in enumerate(hello.services):
        problem = breaker_name_problem(service)
        if problem:
            return f"hello.services[{i}]", problem
    if len(hello.held_generations) > MAX_HELLO_SERVICES:
        return "hello.held_generations", f"at most {MAX_HELLO_SERVICES} breakers"
    for name in hello.held_generations:
        problem = breaker_name_problem(name)
        if problem:
            return "hello.held_generations", problem
    if len(hello.labels) > MAX_LABELS:
        return "hello.labels", f"at most {MAX_LABELS} labels"
    for key, value in hello.labels.items():
        if len(key) > MAX_LABEL_LENGTH or len(value) > MAX_LABEL_LENGTH:
            return "hello.labels", f"keys and values of at most {MAX_LABEL_LENGTH} characters"
    return None


def agent_key(hello: pb.AgentHello, sessions_keyed_by_id: Collection[str] = ()) -> str:
    """What the control plane keys an agent process by: its agent id and instance
    ("research-agent@5f0c..."). An agent that sends no instance (an older one) is keyed by
    its agent id alone, unless a process with another session id already holds that key
    (``sessions_keyed_by_id``: the session ids of the streams keyed by the agent id): then it
    is keyed by its session id ("research-agent@~1a2b..."), which it keeps for its life, so
    two older processes under one id are two agents while both are connected. '@' is in no
    agent id, so no agent id can pose as another's instance, and '~' in no instance, so no
    instance can pose as a session."""
    if hello.instance:
        return f"{hello.agent_id}@{hello.instance}"
    taken = set(sessions_keyed_by_id) - {hello.session_id}
    if taken and hello.session_id:
        digest = hashlib.sha256(hello.session_id.encode()).hexdigest()[:16]
        return f"{hello.agent_id}@~{digest}"
    return hello.agent_id


def bounded_demand(demand: pb.CapacityDemand, replica: bool = False) -> pb.CapacityDemand | None:
    """The demand with its numbers made sane (finite, 0..MAX_DEMAND_UNITS), or None when
    its names are not names. Only a ``replica`` speaks for several agents (each is split
    a share): an agent's demand is one agent's."""
    if name_problem(demand.service) or name_problem(demand.resource):
        return None
    out = pb.CapacityDemand()
    out.CopyFrom(demand)
    out.wanted = _units(demand.wanted)
    out.used = _units(demand.used)
    if not replica:
        out.agents = 1
        out.ClearField("agents_wanted")
        out.ClearField("counted")  # an agent names no other agent's process
    else:
        wants = [_units(w) for w in demand.agents_wanted[: max(1, demand.agents)]]
        del out.agents_wanted[:]
        out.agents_wanted.extend(wants)
        named = [k for k in demand.counted[:MAX_RELAYED_AGENTS] if len(k) <= MAX_RELAYED_KEY_CHARS]
        del out.counted[:]
        out.counted.extend(named)
    return out


def _units(value: float) -> float:
    return min(MAX_DEMAND_UNITS, value) if math.isfinite(value) and value > 0 else 0.0


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7")."""
    if peer.startswith("ipv6:"):
        return peer.rsplit(":", 1)[0] if "]" in peer else peer
    if peer.startswith("ipv4:"):
        return peer.rsplit(":", 1)[0]
    return peer  # unix sockets and the like: the whole string

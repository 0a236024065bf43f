"""An upstream that counts how many calls of each kind are in flight at once.

Callers name each call's kind in the ``probe-kind`` metadata ("fleet": under a fleet probe
permit, "local": a probe of the agent's own breaker, "none": an ordinary call; see
tests.support.probe_agent). The server fails every call at once while failing, else answers
each after ``delay`` seconds (a probe that takes time, so probes overlap). A call its
caller gave up on ends then, not after the delay: it is no longer in flight.

In-process: ``with ProbeUpstream(delay=1.0) as up: up.address``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent import futures
from dataclasses import dataclass

import grpc

from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc


@dataclass(frozen=True, slots=True)
class Call:
    """One call as the upstream saw it: monotonic start and end, kind and calling agent."""

    start: float
    end: float
    kind: str
    agent: str


class _Counting(pb_grpc.EchoServiceServicer):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.failing = False
        self.lock = threading.Lock()
        self.in_flight: Counter[str] = Counter()
        self.most: Counter[str] = Counter()  # the most in flight at once, per kind
        self.calls: list[Call] = []

    def Echo(self, request, context):
        metadata = dict(context.invocation_metadata())
        kind, agent = metadata.get("probe-kind", "none"), metadata.get("agent", "")
        start = time.monotonic()
        with self.lock:
            failing = self.failing
            if not failing:
                self.in_flight[kind] += 1
                self.most[kind] = max(self.most[kind], self.in_flight[kind])
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "upstream told to fail")
        ended = threading.Event()
        context.add_callback(ended.set)  # the caller cancelled, or its deadline passed
        ended.wait(self.delay)
        with self.lock:
            self.in_flight[kind] -= 1
            self.calls.append(Call(start, time.monotonic(), kind, agent))
        return pb.EchoResponse(text=request.text, served_by="probed")


class ProbeUpstream:
    """The counting Echo server on a free loopback port, in this process."""

    def __init__(self, delay: float) -> None:
        self._servicer = _Counting(delay)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
        pb_grpc.add_EchoServiceServicer_to_server(self._servicer, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def fail(self, failing: bool) -> None:
        with self._servicer.lock:
            self._servicer.failing = failing

    def in_flight(self, kind: str) -> int:
        with self._servicer.lock:
            return self._servicer.in_flight[kind]

    def most(self, kind: str) -> int:
        """The most calls of ``kind`` that were in flight at one time."""
        with self._servicer.lock:
            return self._servicer.most[kind]

    def calls(self) -> list[Call]:
        """Every call answered (or given up) so far."""
        with self._servicer.lock:
            return list(self._servicer.calls)

    def summary(self) -> dict[str, dict[str, int]]:
        """Per kind of call: how many were answered, are in flight now, and the most at once."""
        with self._servicer.lock:
            answered = Counter(c.kind for c in self._servicer.calls)
            kinds = set(answered) | set(self._servicer.in_flight) | set(self._servicer.most)
            return {
                k: {
                    "answered": answered[k],
                    "in_flight": self._servicer.in_flight[k],
                    "most": self._servicer.most[k],
                }
                for k in sorted(kinds)
            }

    def __enter__(self) -> ProbeUpstream:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


def most_at_once(calls: list[Call], start: float, end: float) -> int:
    """The most of ``calls`` in flight at one time between ``start`` and ``end``."""
    edges = sorted(
        [(max(c.start, start), 1) for c in calls if c.start < end and c.end > start]
        + [(min(c.end, end), -1) for c in calls if c.start < end and c.end > start]
    )
    most = now = 0
    for _, step in edges:  # an end before a start at the same time: they did not overlap
        now += step
        most = max(most, now)
    return most

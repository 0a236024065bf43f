"""Who decides what counts, and what a fallback's own bug does: the narrower scope wins,
"do not retry" wins over RetryInfo, a caller's error raised by a fallback passes unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from mission_control.client.agent import MissionControl
from mission_control.client.errors import LLMProviderUnavailable
from mission_control.client.outcomes import Outcomes
from mission_control.client.status import to_grpc_status

from tests.interceptors.conftest import policy
from tests.support import echo_pb2 as pb
from tests.support import echo_pb2_grpc as pb_grpc
from tests.support.channels import sync_channel


def _failures(mc: MissionControl, service: str) -> int:
    return mc.view.get(service).tally.failures


def test_a_guards_record_wins_over_its_services_ignore() -> None:
    service_ignores = {"storage_backend": Outcomes(ignore=(OSError,))}
    mc = MissionControl("a", config={"storage_backend": policy("storage_backend")}, outcomes=service_ignores)
    guards = (
        mc.guard("storage_backend", record=(FileNotFoundError,)),
        mc.guard("storage_backend", classify=lambda e: "failure" if isinstance(e, OSError) else None),
    )
    for guard in guards:
        before = _failures(mc, "storage_backend")
        with pytest.raises(FileNotFoundError), guard:
            raise FileNotFoundError(2, "missing")
        assert _failures(mc, "storage_backend") == before + 1
    before = _failures(mc, "storage_backend")
    with pytest.raises(PermissionError), guards[0]:  # the guard says nothing: the service's ignore
        raise PermissionError(13, "denied")
    assert _failures(mc, "storage_backend") == before


def test_within_one_scope_the_more_specific_class_wins() -> None:
    narrow_record = Outcomes(record=(FileNotFoundError,), ignore=(OSError,))
    assert narrow_record.verdict(FileNotFoundError(2, "x")) is not None
    assert narrow_record.verdict(FileNotFoundError(2, "x")).name == "FAILURE"  # type: ignore[union-attr]
    assert narrow_record.verdict(PermissionError(13, "x")).name == "NEITHER"  # type: ignore[union-attr]
    narrow_ignore = Outcomes(record=(OSError,), ignore=(FileNotFoundError,))
    assert narrow_ignore.verdict(FileNotFoundError(2, "x")).name == "NEITHER"  # type: ignore[union-attr]
    assert narrow_ignore.verdict(PermissionError(13, "x")).name == "FAILURE"  # type: ignore[union-attr]


def test_a_fallbacks_own_bug_passes_unchanged_and_counts_as_neither() -> None:
    p = policy("llm_provider", max_retries=0, fallbacks=("llm_backup",))
    mc = MissionControl("a", config={"llm_provider": p, "llm_backup": policy("llm_backup")})

    def backup(prompt: str) -> str:
        return {"a": "1"}[prompt]  # KeyError: a bug in the fallback

    @mc.guard("llm_provider", fallbacks={"llm_backup": backup})
    def generate(prompt: str) -> str:
        raise ConnectionRefusedError("primary down")

    with pytest.raises(KeyError) as caught:
        generate("zzz")
    assert caught.value.args == ("zzz",) and not getattr(caught.value, "__notes__", None)
    backup_tally = mc.view.get("llm_backup").tally
    assert (backup_tally.successes, backup_tally.failures) == (0, 0)
    assert _failures(mc, "llm_provider") == 1


class _Overloaded(pb_grpc.EchoServiceServicer):
    """UNAVAILABLE with a RetryInfo of 50 ms and ``grpc-retry-pushback-ms: -1``."""

    def __init__(self) -> None:
        self.calls = 0

    def Echo(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        status = to_grpc_status(LLMProviderUnavailable("gw", "overloaded", retry_after=0.05))
        context.set_trailing_metadata((*status.trailing_metadata, ("grpc-retry-pushback-ms", "-1")))
        context.abort(status.code, status.details)


@pytest.fixture
def overloaded() -> Iterator[tuple[_Overloaded, str]]:
    servicer = _Overloaded()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    pb_grpc.add_EchoServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_do_not_retry_wins_over_retry_info(overloaded: tuple[_Overloaded, str], path: str) -> None:
    servicer, address = overloaded
    mc = MissionControl("a", config={"llm_provider": policy("llm_provider", max_retries=3, timeout_secs=2)})
    channel = sync_channel(path, grpc.insecure_channel(address), mc, service="llm_provider")
    with pytest.raises(LLMProviderUnavailable):
        pb_grpc.EchoServiceStub(channel).Echo(pb.EchoRequest(text="x"))
    assert servicer.calls == 1
    channel.close()

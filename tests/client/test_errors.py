"""The taxonomy's texts, fields and chaining, and the size bound on what it sends."""

from __future__ import annotations

import pickle

import grpc
import pytest
from mission_control.client.errors import (
    AgentCriticalFailure,
    CircuitBreakerOpen,
    ConfigurationError,
    ErrorContext,
    LLMProviderUnavailable,
    MissionControlError,
    OperationTimeout,
    ResourceExhausted,
    Severity,
    StorageFailure,
)
from mission_control.client.status import MAX_DETAILS_BYTES, read_status, to_status

SEED_TEXTS = [
    (
        AgentCriticalFailure("research", "out of memory"),
        "Agent 'research' critical failure: out of memory",
        "Agent 'research' encountered a critical error. Check logs for details.",
    ),
    (
        LLMProviderUnavailable("claude", "503 from upstream"),
        "LLM provider 'claude' unavailable: 503 from upstream",
        "AI service 'claude' is temporarily unavailable. Please try again later.",
    ),
    (
        StorageFailure("r2", "put_object", "timeout"),
        "Storage backend 'r2' failed during put_object: timeout",
        "Storage system 'r2' is experiencing issues. Your data is safe.",
    ),
    (
        CircuitBreakerOpen("llm_provider", 5),
        "Circuit breaker OPEN for service 'llm_provider' (failed 5 times)",
        "Service 'llm_provider' is temporarily paused to prevent issues. Please try again shortly.",
    ),
    (
        ResourceExhausted("llm_tokens", 1000, 1000),
        "Resource exhausted: llm_tokens at 1000/1000",
        "System resources for 'llm_tokens' are at capacity. Processing will continue shortly.",
    ),
    (
        ConfigurationError("llm.api_key", "API key cannot be empty"),
        "Configuration error in 'llm.api_key': API key cannot be empty",
        "Configuration setting 'llm.api_key' needs adjustment. See documentation.",
    ),
    (
        OperationTimeout("llm_generation", 30),
        "Operation 'llm_generation' timed out after 30s",
        "Operation 'llm_generation' is taking longer than expected. Results will be available soon.",
    ),
]


@pytest.mark.parametrize(("error", "technical", "friendly"), SEED_TEXTS)
def test_seed_texts(error: MissionControlError, technical: str, friendly: str) -> None:
    assert str(error) == technical
    assert error.technical_display() == technical
    assert error.user_friendly_display() == friendly


def test_codes_and_severities() -> None:
    table = {
        AgentCriticalFailure: (grpc.StatusCode.INTERNAL, Severity.CRITICAL),
        LLMProviderUnavailable: (grpc.StatusCode.UNAVAILABLE, Severity.HIGH),
        StorageFailure: (grpc.StatusCode.UNAVAILABLE, Severity.HIGH),
        CircuitBreakerOpen: (grpc.StatusCode.UNAVAILABLE, Severity.MEDIUM),
        ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, Severity.MEDIUM),
        ConfigurationError: (grpc.StatusCode.INVALID_ARGUMENT, Severity.HIGH),
        OperationTimeout: (grpc.StatusCode.DEADLINE_EXCEEDED, Severity.MEDIUM),
    }
    for cls, (code, severity) in table.items():
        assert (cls.grpc_code, cls.severity) == (code, severity)
        assert cls.error_type == cls.__name__


def test_user_texts_say_what_happened() -> None:
    alone = LLMProviderUnavailable("claude", "503")
    tried = LLMProviderUnavailable("claude", "503")
    tried.backups_tried = 1
    serving = LLMProviderUnavailable("claude", "503")
    serving.backup_serving = True
    assert "backup" not in alone.user_friendly_display()
    assert tried.user_friendly_display().endswith("and so are its backup models.")
    assert serving.user_friendly_display().endswith("Using backup models.")  # the seed's, when true
    assert "Please try again in 30 s." in CircuitBreakerOpen("s", 5, retry_after=29.2).user_friendly_display()
    assert "retry automatically" not in CircuitBreakerOpen("s", 5).user_friendly_display()


def test_fractional_timeout_is_shown() -> None:
    assert str(OperationTimeout("probe", 0.25)) == "Operation 'probe' timed out after 0.25s"


def test_cause_chain_and_notes_in_technical_display() -> None:
    try:
        try:
            raise ConnectionResetError("peer reset")
        except ConnectionResetError as exc:
            err = StorageFailure("duckdb", "query", "connection lost")
            err.add_note("while loading session s-1")
            raise err from exc
    except MissionControlError as caught:
        text = caught.technical_display()
    assert text == (
        "Storage backend 'duckdb' failed during query: connection lost: "
        "ConnectionResetError: peer reset\n  note: while loading session s-1"
    )


def test_errors_pickle_with_their_fields() -> None:
    ctx = ErrorContext("s", "a", "o", "sess")
    for error, _, _ in SEED_TEXTS:
        error.context = ctx
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert copy.fields() == error.fields()
        assert copy.context == ctx
    many = ConfigurationError.from_violations([("a", "x"), ("b", "y")])
    assert pickle.loads(pickle.dumps(many)).violations == (("a", "x"), ("b", "y"))


def test_status_stays_within_bound_and_keeps_the_type() -> None:
    huge = "x" * 100_000
    error = ConfigurationError.from_violations([(huge, huge)] * 200)
    try:
        raise error from RuntimeError(huge)
    except ConfigurationError as caught:
        status = to_status(caught, include_stack_trace=True)
    assert status.ByteSize() <= MAX_DETAILS_BYTES
    back = read_status(grpc.StatusCode.INVALID_ARGUMENT, "", status.SerializeToString())
    assert isinstance(back.error, ConfigurationError)


def test_stack_trace_only_when_asked() -> None:
    try:
        raise OperationTimeout("op", 1)
    except OperationTimeout as caught:
        plain = to_status(caught)
        debug = to_status(caught, include_stack_trace=True)
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    assert read_status(code, "", plain.SerializeToString()).error.stack_trace == ""  # type: ignore[union-attr]
    traced = read_status(code, "", debug.SerializeToString()).error
    assert traced is not None and "Traceback" in traced.stack_trace


def test_user_id_travels_only_when_set() -> None:
    code = grpc.StatusCode.UNAVAILABLE
    without = CircuitBreakerOpen("s", 1, context=ErrorContext("s", "a", "o", "sess"))
    back = read_status(code, "", to_status(without).SerializeToString()).error
    assert back is not None and back.context is not None and back.context.user_id is None
    with_user = CircuitBreakerOpen("s", 1, context=ErrorContext("s", "a", "o", "sess", "u-1"))
    back = read_status(code, "", to_status(with_user).SerializeToString()).error
    assert back is not None and back.context is not None and back.context.user_id == "u-1"


def test_breaker_refusal_says_the_state_that_refused() -> None:
    """The seed's text is for an OPEN breaker; a HALF_OPEN and an operator's FORCED_OPEN
    say so (the latter with the operator's reason, not a count of failures)."""
    half_open = CircuitBreakerOpen("llm_provider", 5, state="HALF_OPEN")
    assert str(half_open) == (
        "Circuit breaker HALF_OPEN for service 'llm_provider' (failed 5 times; only its probe calls pass)"
    )
    forced = CircuitBreakerOpen("llm_provider", 0, state="FORCED_OPEN", reason="provider maintenance")
    assert str(forced) == (
        "Circuit breaker FORCED_OPEN for service 'llm_provider' "
        "(forced open by an operator: provider maintenance)"
    )
    assert forced.user_friendly_display() == "Service 'llm_provider' is paused by an operator."
    bare = CircuitBreakerOpen("llm_provider", 0, state="FORCED_OPEN")
    assert str(bare) == (
        "Circuit breaker FORCED_OPEN for service 'llm_provider' (forced open by an operator, no reason given)"
    )
    assert (
        str(CircuitBreakerOpen("s", 3, state="NOT_A_STATE"))
        == "Circuit breaker OPEN for service 's' (failed 3 times)"
    )
    assert CircuitBreakerOpen("s", 3, reason="ignored").reason == ""  # only an operator's state has one


def test_breaker_refusal_state_travels_across_processes() -> None:
    code = grpc.StatusCode.UNAVAILABLE
    for sent in (
        CircuitBreakerOpen("llm_provider", 4),
        CircuitBreakerOpen("llm_provider", 4, state="HALF_OPEN", retry_after=0.1),
        CircuitBreakerOpen("llm_provider", 0, state="FORCED_OPEN", reason="provider maintenance"),
    ):
        status = to_status(sent)
        assert status.message == str(sent)
        back = read_status(code, status.message, status.SerializeToString()).error
        assert isinstance(back, CircuitBreakerOpen)
        assert (back.state, back.reason, str(back)) == (sent.state, sent.reason, str(sent))
        copy = pickle.loads(pickle.dumps(sent))
        assert (copy.state, copy.reason, str(copy)) == (sent.state, sent.reason, str(sent))

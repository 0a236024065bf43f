"""What agents link: :class:`MissionControl` (local view, control-plane stream, executor,
``guard``), the error taxonomy, and policies.

Agents import from here; nothing in this package imports the control-plane server.
"""

from __future__ import annotations

from .agent import BreakerView, Guard, MissionControl
from .config import ErrorHandlingConfig, load_config, load_config_file, validate_configuration
from .errors import (
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
from .executor import current_deadline
from .outcomes import Outcomes
from .policy import Backoff, FailureRate, Quota, RetryBudget, ServicePolicy, SlowCall, default_policy
from .status import error_from_rpc_error, read_status, to_grpc_status, to_status

__all__ = [
    "AgentCriticalFailure",
    "Backoff",
    "BreakerView",
    "CircuitBreakerOpen",
    "ConfigurationError",
    "ErrorContext",
    "ErrorHandlingConfig",
    "FailureRate",
    "Guard",
    "LLMProviderUnavailable",
    "MissionControl",
    "MissionControlError",
    "OperationTimeout",
    "Outcomes",
    "Quota",
    "ResourceExhausted",
    "RetryBudget",
    "ServicePolicy",
    "Severity",
    "SlowCall",
    "StorageFailure",
    "current_deadline",
    "default_policy",
    "error_from_rpc_error",
    "load_config",
    "load_config_file",
    "read_status",
    "to_grpc_status",
    "to_status",
    "validate_configuration",
]

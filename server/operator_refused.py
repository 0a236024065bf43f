"""What ``stats`` and ``policies get`` say about values etcd holds that were refused: the
ones etcd still holds apart from the ones replaced since."""

from __future__ import annotations

from collections.abc import Callable

from mission_control.resilience.v1 import control_plane_pb2 as pb

__all__ = ["no_policy", "print_refused_values", "refused_policy_value"]


def _id(err: pb.ConfigLoadError) -> tuple[str, str, int]:
    return err.key, err.error, err.at.ToNanoseconds()


def print_refused_values(stats: pb.ErrorStatistics, safe: Callable[[object], str]) -> None:
    """The refused values etcd still holds first, then the rest of the log of refusals,
    each saying whether its key holds another value since."""
    held = {_id(err) for err in stats.refused_values_held}
    replaced = {_id(err) for err in stats.refused_values_replaced}
    for err in stats.refused_values_held:
        print(safe(f"rejected config value at {err.key} (etcd holds it now): {err.error}"))
    for err in stats.config_errors:
        if _id(err) in held:
            continue
        note = " (replaced since: no longer in etcd)" if _id(err) in replaced else ""
        print(safe(f"rejected config value at {err.key}{note}: {err.error}"))


def refused_policy_value(stats: pb.ErrorStatistics, service: str) -> pb.ConfigLoadError | None:
    """The refused value etcd holds now for ``service``'s policy, if any."""
    suffix = f"/policies/{service}"
    return next((err for err in stats.refused_values_held if err.key.endswith(suffix)), None)


def no_policy(name: str, stats: pb.ErrorStatistics | None, safe: Callable[[object], str]) -> str:
    """Why ``name`` has no policy in force: none stored, or etcd holds a refused one
    (``stats``: None when not known)."""
    refused = refused_policy_value(stats, name) if stats is not None else None
    if refused is None:
        return f"no policy named {name!r} (its calls use the defaults; `policies list` shows those stored)"
    held = f"etcd holds a value for it, refused ({safe(refused.error)})"
    return f"no policy in force for {name!r}: {held}; its calls use the defaults"

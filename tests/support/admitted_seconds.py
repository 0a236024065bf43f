"""What spending agents admitted, second by second, around named moments (for a failing
assertion's message in the multi-process lease tests)."""

from __future__ import annotations

from collections.abc import Mapping


def per_second(results: Mapping[str, dict], events: Mapping[str, float]) -> str:  # type: ignore[type-arg]
    """One line of the events' offsets, then one line per agent of its admissions a second."""
    start = min(t for r in results.values() for t in r["admitted"])
    lines = [" ".join(f"{n}@{at - start:.1f}" for n, at in events.items())]
    for name, got in results.items():
        counts = [0] * (int(max(events.values()) - start) + 6)
        for t in got["admitted"]:
            if int(t - start) < len(counts):
                counts[int(t - start)] += 1
        lines.append(f"{name}: {counts}")
    return "\n".join(lines)

"""The scaling case in small (``make bench`` runs it at 1,000 to 10,000 agents): 200 agents
on one real control plane, each its own Connect stream, from another process. Every agent
gets every breaker push and a lease each period; outcomes are ingested. Nothing timed."""

from __future__ import annotations

from bench import scale


def test_two_hundred_agents_get_every_push_and_their_leases() -> None:
    (row,) = scale.run((200,), pushes=2, flood_secs=0.5, rounds=2)
    assert row["connected"] == 200
    assert row["pushes"] == 2 and row["push_missing"] == 0
    # two lease rounds or more while every agent held a share: a lease for each, each time
    assert row["leases_received"] >= 2 * 200
    assert row["outcomes_per_s"] > 0 and row["batches_sent"] > 0
    assert row["rss_per_agent_kib"] > 0

"""A backup restored may hold a breaker record at the generation the state held is at, of an
earlier run of that breaker (forgotten since, or first decided by a replica started since:
generations counted over from 0). Such a record is older, not the state held: the load does
not adopt it while the restore is pending, and the restore writes the state held over it
(real etcd; ``server/record_age.py``). A record of the very transition held is left alone,
as is one of that generation reached later (a hand edit after the restore).

Before: a record was older by a lower generation only; the backup's OPEN at the generation
of the held FORCED_OPEN was adopted, and the operator's force-open was undone."""

from __future__ import annotations

from google.protobuf import json_format
from mission_control.client.breaker import BreakerState
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.server.record_age import SLACK_NS, older_than_held
from mission_control.server.store import EtcdStore, Write
from mission_control.server.sync import StoreSync

from tests.server.test_writes_lost_data import parts  # noqa: F401  (the fixture)

HOUR_NS = 3600 * 10**9


def earlier_run(held: bytes, state: int, shift_ns: int) -> bytes:
    """``held`` as an earlier run of the breaker stored it: same generation, ``state``,
    reached ``shift_ns`` before (negative: after)."""
    record = json_format.Parse(held, pb.Breaker(), ignore_unknown_fields=True)
    record.state = state
    record.reason = "an earlier run"
    record.changed_at.FromNanoseconds(record.changed_at.ToNanoseconds() - shift_ns)
    record.opened_at.CopyFrom(record.changed_at)
    return json_format.MessageToJson(record, preserving_proto_field_name=True).encode()


async def test_a_backup_record_of_the_same_generation_from_an_earlier_run_does_not_undo_the_state_held(
    parts: tuple[EtcdStore, StoreSync],  # noqa: F811
    prefix: str,
) -> None:
    store, sync = parts
    key = f"{prefix}/breakers/svc"
    await sync.writer.set_breaker_state("svc", BreakerState.FORCED_OPEN, "maintenance")
    held = sync.breakers.to_record("svc")
    generation = sync.breakers.get("svc").generation
    backup = earlier_run(held, pb.BREAKER_STATE_OPEN, HOUR_NS)

    sync.lost_data("test: etcd restored from a backup")
    result = await store.commit([Write(key, backup)], ())  # what the backup holds
    assert sync.apply(key, backup, result.revision)  # the load meets it while restoring
    found = sync.breakers.find("svc")
    assert found is not None and found.state is BreakerState.FORCED_OPEN, "the backup's OPEN adopted"
    assert found.generation == generation

    assert await sync.writer.restore() >= 1
    entry = await store.get(key)
    assert entry is not None
    stored = json_format.Parse(entry.value, pb.Breaker(), ignore_unknown_fields=True)
    assert (stored.state, stored.generation) == (pb.BREAKER_STATE_FORCED_OPEN, generation)
    assert sync.breakers.revisions["svc"] == entry.mod_revision


def test_a_record_of_the_transition_held_or_reached_later_is_not_older() -> None:
    held = earlier_run(
        json_format.MessageToJson(pb.Breaker(name="svc", generation=4)).encode(),
        pb.BREAKER_STATE_HALF_OPEN,
        0,
    )
    assert not older_than_held(held, held)
    assert not older_than_held(earlier_run(held, pb.BREAKER_STATE_HALF_OPEN, SLACK_NS // 2), held)  # rounding
    assert not older_than_held(earlier_run(held, pb.BREAKER_STATE_OPEN, -HOUR_NS), held)  # a later hand edit
    assert older_than_held(earlier_run(held, pb.BREAKER_STATE_OPEN, HOUR_NS), held)
    lower = json_format.Parse(held, pb.Breaker())
    lower.generation = 3
    lower.changed_at.FromNanoseconds(lower.changed_at.ToNanoseconds() + HOUR_NS)  # (a clock ahead)
    assert older_than_held(json_format.MessageToJson(lower).encode(), held)
    assert not older_than_held(b"not json", held) and not older_than_held(None, held)

"""The last good value of a policy etcd no longer has: read back from the audit records.

A refused value etcd holds is never in force; at a start the key's earlier revisions are
read back to the newest good one (:mod:`.sync`). When etcd has compacted them, every change
of the key may still have its audit record (kept outside the loaded prefix, with the value
it wrote, up to the records' count and age bound): the newest good value recorded before
the refused revision is the value that was in force — but only when the records account
for every change etcd made to the key.

etcd says how many times the key was written since it was created (its ``version``), so
the changes before the refused one are ``version - 1``, all at or after its
``create_revision``. Each record names the key revision it describes (its own revision
when written in the change's transaction, else the one it names: a change from outside
is recorded after it was made), ordered by that revision, never by the time the record
says. A record that cannot be what it says is set aside: one naming a revision after it
was itself written, or naming its own revision once overwritten. A value is picked only
when the remaining records name exactly as many changes as etcd made (and agree on each):

* fewer: a change was made while no control plane ran and only the last one was recorded
  at its start (or the records were pruned) — the value before the refused one may be a
  good value no record holds, newer than any recorded;
* more, or two disagreeing on one revision: not every record is genuine (one was put from
  outside under the audit prefix).

Then nothing is picked: the defaults are in force, and ``stats`` says why. This cannot tell
a planted record that replaces a pruned one from the real one: records are evidence, not
signatures (whoever can write etcd can rewrite them all).
"""

from __future__ import annotations

from dataclasses import dataclass

from mission_control.client.config import policy_from_json
from mission_control.client.errors import ConfigurationError
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .audit_read import AuditReader
from .policies import PolicyBook
from .store import Entry

#: Where a value found this way is said to come from (``stats``, ``policies get``).
FROM_RECORDS = "the last good value, from the audit records"
#: What is said when the records cannot tell the last good value.
NOT_KNOWN = "the last good value is not known"


@dataclass(frozen=True, slots=True)
class Pick:
    """What was in force before a refused value: ``value``, written at ``revision``; or
    None — the defaults — with ``why`` no earlier value is put in force."""

    value: bytes | None
    revision: int = 0
    why: str = ""


class RecordedGood:
    """Finds a policy's last good value in the audit records."""

    def __init__(self, audit: AuditReader, policies: PolicyBook) -> None:
        self.audit = audit
        self.policies = policies

    async def before(self, entry: Entry) -> Pick | None:
        """What was in force before the refused value ``entry`` holds (None: not a
        policy's key). Raises StoreUnavailable."""
        service = self.policies.service_of(entry.key)
        if service is None:
            return None
        if not entry.version or not entry.create_revision:
            return Pick(None, why=f"{NOT_KNOWN}: the store does not say how often the key changed")
        stored = await self.audit.stored_of("policy", service, self.audit_bound())
        return pick(entry, service, stored)

    def audit_bound(self) -> int:
        retention = getattr(self.audit, "retention", None)
        return retention.max_records if retention is not None else 1000


def described(stored: Entry, record: pb.AuditRecord) -> int:
    """The key revision a policy record describes; 0 when it cannot be what it says."""
    revision = record.revision  # its own when it names none (see AuditReader.parse)
    if record.kind != "policy" or revision > stored.mod_revision:
        return 0  # a change made after its record was written
    if revision == stored.mod_revision and stored.create_revision != revision:
        return 0  # written with its change, and overwritten since
    return revision


def pick(entry: Entry, service: str, stored: list[tuple[Entry, pb.AuditRecord]]) -> Pick:
    """The value in force before ``entry``'s refused one, from the records of ``service``
    (see the module's docstring)."""
    created, refused = entry.create_revision, entry.mod_revision
    changes: dict[int, str] = {}  # key revision -> the value written there
    for record_entry, record in stored:
        revision = described(record_entry, record)
        if not created <= revision < refused:
            continue  # set aside, after the refused value, or before the key was created
        if changes.setdefault(revision, record.new_value) != record.new_value:
            return Pick(
                None, why=f"{NOT_KNOWN}: two audit records disagree on what revision {revision} wrote"
            )
    made = entry.version - 1
    since = f"since the key was created (revision {created}) and before revision {refused}"
    if len(changes) > made:
        why = f"audit records name {len(changes)} changes {since}, etcd made {made}: not all are genuine"
        return Pick(None, why=f"{NOT_KNOWN}: {why}")
    if len(changes) < made:
        why = (
            f"{made - len(changes)} of the {made} changes {since} have no audit record (made while"
            " no control plane ran, or pruned) and etcd compacted them"
        )
        return Pick(None, why=f"{NOT_KNOWN}: {why}")
    for revision in sorted(changes, reverse=True):
        value = changes[revision]
        if not value:  # a deletion, yet etcd holds the key since before it
            return Pick(None, why=f"{NOT_KNOWN}: an audit record says revision {revision} deleted the key")
        try:
            policy_from_json(value.encode(), service=service)
        except ConfigurationError:
            continue  # refused then too: look further back
        return Pick(value.encode(), revision)
    return Pick(None, why=f"the key held no good value {since}")

"""The last good value of a policy etcd no longer has: read back from the audit records.

A refused value etcd holds is never in force; at a start the key's earlier revisions are
read back to the newest good one (:mod:`.sync`). When etcd has compacted them, each change
of the key may still have its audit record (kept outside the loaded prefix, with the value
it wrote, up to the records' count and age bound, past which the records a last good
value is read back from are kept: :mod:`.audit_kept`). The value in force before the
refused one is picked from them only when it can be known:

* **The version before the refused one is recorded** (a change from outside is recorded
  with the key's etcd ``version``): that record's value, when good, is the one in force,
  whatever happened before it; the records must fit etcd's versions and the mark
  (:mod:`.last_good_versions`). Records naming no version are counted:
* **Every change is accounted for.** etcd says how many times the key was written since it
  was created (its ``version``): ``version - 1`` changes before the refused one. The key's
  mark, when created with the key, is written once per recorded change (its own
  ``version``, pruned records included); otherwise the records kept are counted. A change
  without a record — made while no control plane ran, when its start records only the
  last one — may have been a good value newer than any recorded: nothing is picked.
* **Records are placed by the key revision they describe**, never by the time they say: a
  record's own revision when written in the change's transaction (and never overwritten
  since), else the earlier one it names (a change from outside is recorded after it was
  made). One naming a revision after it was written is set aside, and so is one naming a
  revision after the change the mark names: a genuine one would have moved the mark on.
* **The mark's record is the newest.** It is the value in force when good; when it records
  the refused value itself (from outside), its old value is the one recorded before it.
  Further back, the records must agree on each revision and name no more changes than
  were made or recorded.

Otherwise the defaults are in force, and ``stats`` says why the last good value is not
known. A planted record that takes the place of a pruned one is not told from the real
one: the records are evidence, not signatures (whoever can write etcd can rewrite them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mission_control.client.config import policy_from_json
from mission_control.client.errors import ConfigurationError
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .audit_read import AuditReader, bucket_end
from .last_good_versions import NOT_KNOWN, by_version
from .policies import PolicyBook
from .store import Entry

#: Where a value found this way is said to come from (``stats``, ``policies get``).
FROM_RECORDS = "the last good value, from the audit records"


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
        mark = await self.audit.store.get(self.audit.mark_of(entry.key))
        stored = await self.audit.stored_of("policy", service, await self.audit_bound())
        return pick(entry, service, stored, mark)

    async def audit_bound(self) -> int:
        """How many policy records are read: every one kept (a prune keeps the records a
        last good value is read back from past the count bound too, see :mod:`.audit_kept`)."""
        bucket = self.audit.bucket("policy")
        return await self.audit.store.count(bucket, bucket_end(bucket))


def described(stored: Entry, record: pb.AuditRecord) -> int:
    """The key revision a policy record describes; 0 when it cannot be what it says."""
    revision = record.revision  # its own when it names none (see AuditReader.parse)
    if record.kind != "policy" or revision > stored.mod_revision:
        return 0  # a change made after its record was written
    if revision == stored.mod_revision and stored.create_revision != revision:
        return 0  # written with its change, and overwritten since
    return revision


def marked(
    entry: Entry, mark: Entry | None, stored: Sequence[tuple[Entry, pb.AuditRecord]] = ()
) -> tuple[str, int, int | None]:
    """What the key's mark says: the record it names (empty: none), the key revision that
    record describes, and how many changes of the key were recorded before the refused
    one — from the mark's version, written once per recorded change — when the mark was
    created with the key or with the record of its creation (None: not known; an older
    mark also counts an earlier key's changes, a younger one none made before it)."""
    if mark is None:
        return "", entry.mod_revision, None
    record, revision, present = AuditReader.described(mark)
    if not present or not entry.create_revision <= revision <= entry.mod_revision:
        return "", entry.mod_revision, None  # the key changed since, unrecorded
    if mark.create_revision != entry.create_revision and not born_with(entry, mark, stored):
        return record, revision, None
    return record, revision, mark.version - (1 if revision == entry.mod_revision else 0)


def born_with(entry: Entry, mark: Entry, stored: Sequence[tuple[Entry, pb.AuditRecord]]) -> bool:
    """Whether ``mark`` was created in the transaction of the record of the key's creation
    (a key put from outside, recorded after): it counts every recorded change since, as
    one created with the key does. That record is never overwritten, and no record can be
    put at that revision later."""
    return any(
        kept.create_revision == kept.mod_revision == mark.create_revision
        and described(kept, record) == entry.create_revision
        for kept, record in stored
    )


def pick(entry: Entry, service: str, stored: list[tuple[Entry, pb.AuditRecord]], mark: Entry | None) -> Pick:
    """The value in force before ``entry``'s refused one, from the records of ``service``
    and the key's ``mark`` (see the module's docstring)."""
    created, refused, made = entry.create_revision, entry.mod_revision, entry.version - 1
    since = f"since the key was created (revision {created}) and before revision {refused}"
    if made < 1:
        return Pick(None, why="the key was created with this value: none was in force before it")
    named, newest, recorded = marked(entry, mark, stored)
    told = by_version(entry, stored, (named, newest), described, lambda value: _good(value, service))
    if told is not None:  # a record names the version before the refused one
        value, revision, why = told
        return Pick(value, revision, why)
    claims: dict[int, set[str]] = {}  # key revision -> the values records say it wrote there
    verified: tuple[int, str] | None = None  # the value the mark's record says was written
    previous = ""  # the value last recorded before the refused one (its record, from outside, says)
    for record_entry, record in stored:
        revision = described(record_entry, record)
        if record_entry.key == named and revision == newest:
            if revision < refused:
                verified = (revision, record.new_value)
            elif revision < record_entry.mod_revision:
                previous = record.old_value
        elif created <= revision <= newest and revision < refused:  # a later one would have moved the mark on
            claims.setdefault(revision, set()).add(record.new_value)
    if verified is not None:  # the one the mark names, whatever others say of its revision
        claims.pop(verified[0], None)
    missing = made - (len(claims) + (verified is not None) if recorded is None else recorded)
    if missing > 0:
        how = "made while no control plane ran" + ("" if recorded is not None else ", or pruned")
        why = f"{missing} of the {made} changes {since} have no audit record ({how}) and etcd compacted them"
        return Pick(None, why=f"{NOT_KNOWN}: {why}")
    if verified is None and previous:  # the newest record below says the same (if kept)
        last = max((r for r, values in claims.items() if previous in values), default=0)
        if last:
            claims = {r: values for r, values in claims.items() if r < last}
            verified = (last, previous)
    if verified is not None:  # the newest: what was in force, unless refused too
        if _good(verified[1], service):
            return Pick(verified[1].encode(), verified[0])
        claims[verified[0]] = {verified[1]}
    return _walk(claims, service, since, made if recorded is None else recorded)


def _walk(claims: dict[int, set[str]], service: str, since: str, most: int) -> Pick:
    """The newest good value claimed, when the claims add up (``most``: how many changes
    can have a record)."""
    for revision, values in claims.items():
        if len(values) > 1:
            return Pick(
                None, why=f"{NOT_KNOWN}: two audit records disagree on what revision {revision} wrote"
            )
    if len(claims) > most:
        why = f"audit records name {len(claims)} changes {since}, {most} were made or recorded"
        return Pick(None, why=f"{NOT_KNOWN}: {why}: not all are genuine")
    for revision in sorted(claims, reverse=True):
        [value] = claims[revision]
        if not value:  # a deletion, yet etcd holds the key since before it
            return Pick(None, why=f"{NOT_KNOWN}: an audit record says revision {revision} deleted the key")
        if _good(value, service):  # else refused then too: look further back
            return Pick(value.encode(), revision)
    if len(claims) < most:
        return Pick(
            None, why=f"{NOT_KNOWN}: the audit records kept of the changes {since} hold no good value"
        )
    return Pick(None, why=f"no good value was written {since}")


def _good(value: str, service: str) -> bool:
    try:
        policy_from_json(value.encode(), service=service)
    except ConfigurationError:
        return False
    return bool(value)

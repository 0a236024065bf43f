"""The last good value of a policy told by the etcd version its records name.

A record of a change from outside names the key's etcd ``version`` after it (read with
the change). A record naming the version just before the refused one's describes the
change etcd made right before it: its value is what was in force, whatever happened
before it — changes made while no control plane ran, pruned records. When that value
was refused too, the record of the version before it is looked at, and so on.

The records are evidence, not signatures, so they must fit together and with the key's
mark (see :mod:`.last_good`) before one is picked:

* records naming one version name one revision and one value; a higher version, a later
  revision; version 1 the key's creation and no version before as many revisions;
* no record names a change between two consecutive versions (etcd made none there);
* the mark names that record, or the refused change recorded from outside with that
  value as the one it replaced (a genuine record moves the mark on when it is written).

Every record of a write names the version too: a control plane's own, written in the
change's transaction, the version that transaction's compare makes certain (see
:mod:`.write_versions`); a deletion's none (a key put again starts over: its records
before its creation revision are set aside).

When the records naming versions do not fit, the defaults are in force (``stats`` says
why). When no record names the version just before the refused one (records written
before records named versions, or pruned), or a record naming none does not fit those
that do (put from outside under the audit prefix, or written before records named
versions), :func:`.last_good.pick` counts the changes as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mission_control.resilience.v1 import control_plane_pb2 as pb

from .store import Entry

#: What is said when the records cannot tell the last good value.
NOT_KNOWN = "the last good value is not known"


def by_version(
    entry: Entry,
    stored: Sequence[tuple[Entry, pb.AuditRecord]],
    mark: tuple[str, int],
    described: Callable[[Entry, pb.AuditRecord], int],
    good: Callable[[str], bool],
) -> tuple[bytes | None, int, str] | None:
    """The value in force before ``entry``'s refused one as the versions the records name
    tell it: (value, revision, "") or (None, 0, why it is not known); None when no record
    names the version right before the refused one. ``mark``: the record key the key's
    mark names and the revision it describes."""
    created, refused, top = entry.create_revision, entry.mod_revision, entry.version
    versions: dict[int, tuple[int, str]] = {top: (refused, "")}  # version -> (revision, value)
    claims: dict[int, set[str]] = {}  # revision -> the values records naming no version say
    named = None  # the record the mark names
    for record_entry, record in stored:
        revision = described(record_entry, record)
        if not created <= revision <= refused:  # set aside, or of the key before it was created
            continue
        if (record_entry.key, revision) == mark:
            named = record
        if revision == refused:
            continue  # the refused change itself (its record says what it replaced)
        if not record.version:
            claims.setdefault(revision, set()).add(record.new_value)
            continue
        seen = versions.setdefault(int(record.version), (revision, record.new_value))
        if seen != (revision, record.new_value):
            why = f"two audit records disagree on what made the key's version {record.version}"
            return None, 0, f"{NOT_KNOWN}: {why}"
    if top - 1 not in versions:
        return None
    revision, value = versions[top - 1]
    why = _misfit(versions, {}, created, top)
    if not why and _misfit(versions, claims, created, top):
        return None  # a record naming no version does not fit them: counted as before
    if not why and (named is None or mark[1] not in (revision, refused)):
        why = f"the key's mark does not name the record of revision {revision} (version {top - 1})"
    if not why and mark[1] == refused and named is not None and named.old_value != value:
        why = f"the refused value's record says it replaced another value than revision {revision} wrote"
    if why:
        return None, 0, f"{NOT_KNOWN}: {why}"
    for version in range(top - 1, 0, -1):
        if version not in versions:
            return None  # the records name no version further back: counted as before
        revision, value = versions[version]
        if good(value):
            return value.encode(), revision, ""
    since = f"since the key was created (revision {created}) and before revision {refused}"
    return None, 0, f"no good value was written {since}"


def _misfit(versions: dict[int, tuple[int, str]], claims: dict[int, set[str]], created: int, top: int) -> str:
    """Why the versions named do not fit etcd's (empty: they do)."""
    ordered = sorted(versions.items())
    for index, (version, (revision, value)) in enumerate(ordered):
        says = f"an audit record says revision {revision} made the key's version {version}"
        impossible = (
            version > top or revision - created < version - 1 or (version == 1) != (revision == created)
        )
        if impossible or (version < top and not value):  # (a deletion ends the key)
            return f"{says}: etcd cannot have"
        if index and ordered[index - 1][1][0] + (version - ordered[index - 1][0]) > revision:
            before, (at, _) = ordered[index - 1]
            return f"{says}, and another says revision {at} made its version {before}"
        if version < top and claims.get(revision, {value}) != {value}:
            return f"two audit records disagree on what revision {revision} wrote"
    by_revision = {revision: version for version, (revision, _) in ordered}
    for revision in claims:
        if revision in by_revision:
            continue
        before = max((r for r in by_revision if r < revision), default=0)
        after = min((r for r in by_revision if r > revision), default=0)
        if before and after and by_revision[after] == by_revision[before] + 1:
            between = (
                f"between two consecutive versions of the key ({by_revision[before]}, {by_revision[after]})"
            )
            return f"an audit record names a change at revision {revision}, {between}"
    return ""

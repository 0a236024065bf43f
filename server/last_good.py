"""The last good value of a policy etcd no longer has: read back from the audit records.

A refused value etcd holds is never in force; at a start the key's earlier revisions are
read back to the newest good one (:mod:`.sync`). When etcd has compacted them, every change
of the key still has its audit record (kept outside the loaded prefix, with the value it
wrote, up to the records' count and age bound): the newest record before the refused
revision with a value that parses is the value that was in force.
"""

from __future__ import annotations

from mission_control.client.config import policy_from_json
from mission_control.client.errors import ConfigurationError

from .audit_read import AuditReader
from .policies import PolicyBook

#: Where a value found this way is said to come from (``stats``, ``policies get``).
FROM_RECORDS = "the last good value, from the audit records"


class RecordedGood:
    """Finds a policy's last good value in the audit records."""

    def __init__(self, audit: AuditReader, policies: PolicyBook) -> None:
        self.audit = audit
        self.policies = policies

    async def before(self, key: str, revision: int) -> tuple[bytes, int] | None:
        """The newest good value of ``key`` recorded below ``revision``, with its revision;
        None when the key was absent then, or nothing good is recorded (pruned).
        Raises StoreUnavailable."""
        service = self.policies.service_of(key)
        if service is None:
            return None
        records = await self.audit.of("policy", service, self.audit_bound())
        for record in reversed(records):  # newest first
            if not record.revision or record.revision >= revision:
                continue
            if not record.new_value:
                return None  # deleted: no policy was in force then
            value = record.new_value.encode()
            try:
                policy_from_json(value, service=service)
            except ConfigurationError:
                continue  # refused then too: look further back
            return value, record.revision
        return None

    def audit_bound(self) -> int:
        retention = getattr(self.audit, "retention", None)
        return retention.max_records if retention is not None else 1000

"""Reading the audit records: pages, newest first, with bounded work per page, and
whether a control plane wrote each record.

A record a control plane writes is created in the transaction of its change, beside the
change's mark (see :mod:`.audit`), and the mark names it: at the record's revision the
mark was written and holds the record's key. A record put from outside (``etcdctl put``
under the audit prefix) has no such mark and is shown as not written by a control plane;
one overwritten after it was written, too. This is no signature: whoever can write etcd
can also write a mark in the same transaction. Once etcd compacted the revision away,
the check says ``unknown``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf import json_format
from mission_control.resilience.v1 import control_plane_pb2 as pb

from .store import Entry, Store, WatchCompacted

_log = logging.getLogger("mission_control.server.audit")

KINDS = ("policy", "breaker", "shadow")
#: The kind of the import bundles (what a config import replaced, for its rollback).
IMPORTS = "import"
VERIFIED = "verified"
FOREIGN = "not written by a control plane"
UNKNOWN = "unknown"
_INVERT = 10**20 - 1
_TOKEN = re.compile(r"\d{20}(-[0-9a-z]{1,8}){1,2}")


def invert(ns: int) -> str:
    """The part of a record's key that makes newer records come first."""
    return f"{_INVERT - ns:020d}"


def bucket_end(bucket: str) -> str:
    """The end of the range of keys starting with ``bucket``."""
    return bucket[:-1] + chr(ord(bucket[-1]) + 1)


def encode(record: pb.AuditRecord) -> bytes:
    return json_format.MessageToJson(record, preserving_proto_field_name=True, indent=None).encode()


def value_of(text: str) -> bytes | None:
    """A record's value as stored (None: absent)."""
    return text.encode() if text else None


def valid_token(token: str) -> bool:
    return not token or _TOKEN.fullmatch(token) is not None


@dataclass(frozen=True, slots=True)
class Page:
    """Records newest first; where the next page starts (empty: no more); how many
    stored records were read to find them."""

    records: list[pb.AuditRecord]
    token: str
    read: int


class _Stream:
    """One kind's records, newest first, read a chunk at a time."""

    def __init__(self, store: Store, bucket: str, token: str, since_ns: int, chunk: int) -> None:
        self.store, self.bucket, self.chunk = store, bucket, chunk
        self.start = f"{bucket}{token}\0" if token else bucket
        # At or after ``since``: keys up to its inverted time ('.' sorts after '-').
        self.end = f"{bucket}{invert(since_ns)}." if since_ns > 0 else bucket_end(bucket)
        self.buffer: deque[Entry] = deque()
        self.more = True

    async def fill(self, most: int) -> int:
        if self.buffer or not self.more or most <= 0:
            return 0
        entries, self.more = await self.store.scan(self.start, self.end, min(self.chunk, most))
        self.buffer.extend(entries)
        if entries:
            self.start = entries[-1].key + "\0"
        return len(entries)

    def head(self) -> str:
        return self.buffer[0].key.removeprefix(self.bucket)


class AuditReader:
    """Where the records are kept, and how they are read back."""

    kinds = KINDS

    def __init__(self, store: Store, prefix: str) -> None:
        base = prefix.rstrip("/")
        self.store = store
        self.prefix = base + "-audit/"
        #: Where an earlier version kept them (inside the loaded prefix).
        self.legacy_prefix = base + "/audit/"
        self.marks = base + "/audited/"
        #: Names the records a control plane moved from the legacy prefix, at that revision.
        self.moved_key = base + "/audit-moved"
        self._state = base + "/"
        #: The stored key a record's (kind, name) is about (set by the control plane).
        self.key_of: Callable[[str, str], str | None] = lambda kind, name: None

    def is_record(self, key: str) -> bool:
        """Whether ``key`` is a mark: written in the transaction of every recorded change."""
        return key.startswith(self.marks)

    def mark_of(self, key: str) -> str:
        return self.marks + key.removeprefix(self._state)

    def claim_of(self, key: str) -> str:
        """Where ``key``'s claim is kept (see :mod:`.audit_seen`): outside the prefix the
        replicas load and watch."""
        return f"{self.prefix}outside/{key.removeprefix(self._state)}"

    def key_of_mark(self, mark: str) -> str:
        return self._state + mark.removeprefix(self.marks)

    def bucket(self, kind: str) -> str:
        return f"{self.prefix}{kind}/"

    @staticmethod
    def described(mark: Entry) -> tuple[str, int, bool]:
        """What a mark says: the record's key, the revision of the change it describes
        (the mark's own, unless it names one: a change recorded after it was made), and
        whether the key was present after it."""
        text = mark.value.decode(errors="replace")
        record, _, revision = text.removeprefix("-").rpartition(" ")  # a prefix may hold spaces
        if not (record and revision.isdigit()):
            record, revision = text.removeprefix("-"), ""
        return record, int(revision) if revision else mark.mod_revision, not text.startswith("-")

    def parse(self, entry: Entry, prefix: str = "") -> pb.AuditRecord | None:
        record = pb.AuditRecord()
        try:
            json_format.Parse(entry.value, record, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError, ValueError, TypeError, RecursionError):
            _log.warning("audit record %s does not parse", entry.key[:200])
            return None
        record.id = entry.key.removeprefix(prefix or self.prefix)
        if not record.revision:  # written with its change: the same revision
            record.revision = entry.mod_revision
        return record

    def _shown(self, entry: Entry) -> pb.AuditRecord:
        """A record as listed: one that does not parse is listed as such, never skipped."""
        record = self.parse(entry)
        if record is None:
            record = pb.AuditRecord(
                id=entry.key.removeprefix(self.prefix)[:200], action="(unreadable record)",
                revision=entry.mod_revision, provenance=FOREIGN,
            )  # fmt: skip
        return record

    async def page(
        self,
        *,
        kinds: tuple[str, ...] = KINDS,
        size: int = 100,
        token: str = "",
        name: str = "",
        since_ns: int = 0,
        verify: bool = True,
    ) -> Page:
        """Up to ``size`` records of ``kinds`` (about ``name``, at or after ``since_ns``),
        newest first, from ``token`` on. At most about four pages of records are read,
        whatever is kept: a page may hold fewer records than asked, with a token to go on.
        Raises StoreUnavailable."""
        found, token, read = await self._read(kinds, size, token, name, since_ns)
        if verify:
            await asyncio.gather(*(self._check(e, r) for e, r in found if not r.provenance))
        return Page([r for _, r in found], token, read)

    async def _read(
        self, kinds: tuple[str, ...], size: int, token: str, name: str, since_ns: int
    ) -> tuple[list[tuple[Entry, pb.AuditRecord]], str, int]:
        """A page's records with their stored entries, the next token, and how many
        stored records were read."""
        budget = 4 * size + 64
        streams = [_Stream(self.store, self.bucket(k), token, since_ns, size) for k in kinds]
        found: list[tuple[Entry, pb.AuditRecord]] = []
        read, last = 0, ""
        while len(found) < size and read < budget:
            for stream in streams:
                read += await stream.fill(budget - read)
            live = [s for s in streams if s.buffer]
            if not live:
                break
            stream = min(live, key=_Stream.head)
            last = stream.head()
            entry = stream.buffer.popleft()
            record = self._shown(entry)
            if not name or record.name == name:
                found.append((entry, record))
        more = any(s.buffer or s.more for s in streams)
        return found, last if more else "", read

    async def of(self, kind: str, name: str, most: int) -> list[pb.AuditRecord]:
        """The records of one policy or breaker, oldest first, from the newest ``most``
        of its kind. Raises StoreUnavailable."""
        return [record for _, record in await self.stored_of(kind, name, most)]

    async def stored_of(self, kind: str, name: str, most: int) -> list[tuple[Entry, pb.AuditRecord]]:
        """:meth:`of`, each record with its stored entry (its own revisions).
        Raises StoreUnavailable."""
        found: list[tuple[Entry, pb.AuditRecord]] = []
        token, read = "", 0
        while read < most:
            page, token, done = await self._read((kind,), 100, token, name, 0)
            found += page
            read += done
            if not token:
                break
        return found[::-1]

    async def _check(self, entry: Entry, record: pb.AuditRecord) -> None:
        record.provenance = await self.provenance(entry, record)

    async def provenance(self, entry: Entry, record: pb.AuditRecord) -> str:
        """Whether a control plane wrote ``entry`` (see the module's docstring)."""
        at = entry.mod_revision
        if entry.create_revision and entry.create_revision != at:
            return FOREIGN  # overwritten after it was written
        key = self.key_of(record.kind, record.name) if record.kind in KINDS else None
        try:
            if key is not None:
                mark = await self.store.get(self.mark_of(key), revision=at)
                # The mark names the record (and, for a change from outside, the
                # change's revision after it): compare the record's key alone.
                if mark is not None and mark.mod_revision == at and self.described(mark)[0] == entry.key:
                    return VERIFIED
                # A change from outside recorded after a later write moved its mark on:
                # the key's claim, written with it, names it.
                claim = await self.store.get(self.claim_of(key), revision=at)
                if claim is not None and claim.mod_revision == at and _claim_names(claim, entry.key):
                    return VERIFIED
            moved = await self.store.get(self.moved_key, revision=at)
        except WatchCompacted:
            return UNKNOWN
        if moved is not None and moved.mod_revision == at and entry.key.encode() in moved.value.split():
            return VERIFIED
        return FOREIGN


def _claim_names(claim: Entry, record: str) -> bool:
    """Whether a claim names ``record`` as the last it was written with."""
    try:
        data = json.loads(claim.value)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("record") == record

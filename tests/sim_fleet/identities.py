"""The random identities the product draws, drawn from the schedule's seed instead.

A replica draws its probe grants' series and first number (``GrantNumbers``), the tails of
its audit record keys and its store-history token from ``secrets``, and its relay's session
and outcome series from ``uuid4``. They change no decision of a schedule, but they are in
what etcd holds and in what the replicas and agents send; drawn from the seed, a replay
holds and sends the very same bytes. The loop runs one schedule at a time in one thread,
so swapping the module functions for its run touches nothing else.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import uuid
from collections.abc import Iterator


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """``secrets.randbits``, ``secrets.token_hex`` and ``uuid.uuid4`` drawn from ``seed``."""
    rng = random.Random(f"identities/{seed}")

    def token_hex(nbytes: int | None = None) -> str:
        size = 32 if nbytes is None else nbytes
        return rng.getrandbits(8 * size).to_bytes(size, "big").hex() if size else ""

    def uuid4() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    saved = (secrets.randbits, secrets.token_hex, uuid.uuid4)
    secrets.randbits, secrets.token_hex, uuid.uuid4 = rng.getrandbits, token_hex, uuid4  # type: ignore[assignment]
    try:
        yield
    finally:
        secrets.randbits, secrets.token_hex, uuid.uuid4 = saved  # type: ignore[assignment]

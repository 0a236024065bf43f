"""Fixed-seed regressions fail again with their defect put back: each replays, at the
schedule version it was picked at, schedules that showed the defect it names.

Which schedule shows a defect depends on the timing of everything else, so a change elsewhere
can hide it from one schedule: each defect is looked for in several (all keep every invariant
without it), and one of them showing it is enough. A defect no schedule shows any more
is shown by a focused test instead: 4097's (a leader taking its view of the epoch record
as known once its watch had loaded) by ``tests/server/test_takeover_read.py``, three of
whose four cases fail with it back; 3088's (a relay link that looked at the leader key only
when answered) by ``tests/server/test_relay_follows_leader.py``; schedule 0's (a term told by
the leader key's revision) by ``tests/server/test_leadership_term.py``; schedule 18's (a
follower that dropped an agent whose stream ended from its demand at once, so the leader
leased its units to the others while it spent them) by ``tests/server/test_relay_leases.py``,
two of whose nine cases fail with it back — schedules 18, 120, 121 and 40 (version 1,
``--active 10``) no longer show it since the store's history token (one more etcd write at
the start and after a wipe) moved their timing, and a search from schedule 0 up with it back
found none before it was stopped."""

from __future__ import annotations

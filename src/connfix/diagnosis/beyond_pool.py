"""Which of a host's idle connections are beyond its pool: the leaked ones, told apart
from the pool's own — for `terminate --excess-only` and `pgbouncer_kill_clients`.

A host holds `held` connections of its services; its pools keep `pool` of them.
The excess are leaked, but *which* ones? "Oldest idle first" cannot say: on a quiet
app the pool's own connections are the ones idle longest (filled at start, not used
since), so it ends the connections the pool will hand out next and spares the leak.

What does tell them apart, for every pool library seen (SQLAlchemy's QueuePool,
HikariCP, psycopg_pool, pgx, node-postgres) and both ways a connection is seen
(pg_stat_activity's backend_start, PgBouncer's connect_time):
- a pool opens its connections when the process starts (or at its first requests) and
  keeps them for the life of the process; a leak adds connections later, over time.
  So the **newest connected** idle connections are ended first, never the oldest;
- a connection used recently is in use, whichever it is: those are never candidates
  (the caller's `older_than`), and they count as kept;
- the timestamps have a resolution (PgBouncer's: one second): a connection connected
  in the same second as one that is kept cannot be told from it, and is left alone.
Ties are broken by last use (least recently used first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

SAME_SECOND = "connected in the same second as the pool's: cannot be told apart"
WITHIN_POOL = "within the host's pool"


@dataclass(frozen=True)
class Choice(Generic[T]):
    """Which idle connections to end, and why the others stay (reason → count)."""

    chosen: list[T]
    left: dict[str, int]


def beyond_the_pool(
    idle: list[T],
    held: int,
    pool: int,
    connected: Callable[[T], float | None],
    last_used: Callable[[T], float | None],
) -> Choice[T]:
    """Of one host's idle, old-enough connections `idle` (all its services'), choose the
    ones beyond its pool: `held − pool` at most, newest connected first (see the
    module's docstring). `pool` is how many connections its pools keep (pool size ×
    workers; an overflow connection is closed when returned, so one idle for long is
    no longer the pool's). Less those in use now (`held` − the idle ones), the oldest
    that many idle ones may be the pool's own: one connected in the same second as any
    of them is never chosen. `connected` / `last_used` give epoch seconds (None:
    unknown — such a connection is never chosen)."""
    excess = max(0, held - pool)
    known = [c for c in idle if connected(c) is not None]
    left: dict[str, int] = {}
    if len(known) < len(idle):
        left["connect time unknown"] = len(idle) - len(known)
    known.sort(key=lambda c: (-(connected(c) or 0.0), last_used(c) or 0.0))
    chosen = known[:excess]
    # the pool's own among the idle: its size less the host's connections in use now
    # (used recently, lent, running: the pool's, most likely)
    idle_of_pool = min(len(known), max(0, pool - (held - len(idle))))
    pools_own = known[len(known) - idle_of_pool :] if idle_of_pool else []
    seconds = {int(connected(c) or 0) for c in pools_own}
    tied = [c for c in chosen if int(connected(c) or 0) in seconds]
    if tied:
        chosen = [c for c in chosen if int(connected(c) or 0) not in seconds]
        left[SAME_SECOND] = len(tied)
    if len(known) > excess:
        left[WITHIN_POOL] = len(known) - excess
    return Choice(chosen, left)

"""Where each prompt prefix lives: its home replica, for prefix-affinity routing.

A prefix's home is the replica that served it first — the least loaded one when it was
first seen, so prefixes spread over the replicas as they arrive, however they hash — and
it stays there for GATEWAY_PREFIX_TTL_S after its last use, while the engine's prompt
cache holds it. Homes live in Redis when the gateway has one (GATEWAY_REDIS_URL), so every
gateway process sends a prefix to the same replica: the first process to see a prefix
claims its home (`SET NX`), the others read it. Each process keeps what it read for a few
seconds, so a request reads Redis only for a prefix it has not seen lately. Without Redis
the homes are kept in the process (the embedded default runs one gateway process).

Prefixes are held as digests, in a bounded map (least recently used first out): a client
sending a new prefix with every request costs the gateway a fixed amount of memory.
"""

import hashlib
import logging
from collections import Counter

from django.conf import settings

from gateway.cache import KeyCache

log = logging.getLogger("gateway.affinity")

MAX_LOCAL = 100_000
READ_AGAIN_S = 10.0  # how long a process trusts a home it read from Redis
# A prefix whose home passed this many requests in a row on to another replica (the load
# bound) moves its home there: a home that stays too busy — all the prefixes were homed
# before a replica was added, or one prefix grew hot — sheds prefixes, at one cold read
# each, instead of spilling every request.
MOVE_AFTER_SPILLS = 3
SPILLS_KEPT_S = 60.0  # spills further apart than this are not "in a row"


def prefix_ttl() -> int:
    return max(1, int(getattr(settings, "GATEWAY_PREFIX_TTL_S", 600)))


class Affinity:
    def __init__(self, redis=None):
        self.redis = redis
        ttl = READ_AGAIN_S if redis is not None else prefix_ttl()
        self.local = KeyCache(size=MAX_LOCAL, ttl=ttl, negative_ttl=0)
        # Homes this process gave each replica: a new prefix goes to the one with fewest.
        self.claims: Counter[int] = Counter()
        self.spills = KeyCache(size=MAX_LOCAL, ttl=SPILLS_KEPT_S, negative_ttl=0)

    @staticmethod
    def key(deployment_id: int, prefix: str) -> str:
        digest = hashlib.blake2b(prefix.encode(), digest_size=16).hexdigest()
        return f"gantry:prefix:{deployment_id}:{digest}"

    async def home(self, key: str) -> int | None:
        """The replica this prefix lives on, if it has been seen (its time renewed)."""
        hit, replica = self.local.get(key)
        if hit:
            if self.redis is None:
                self.local.put(key, replica)  # in-process: a use renews it
            return replica
        if self.redis is None:
            return None
        try:
            value = await self.redis.getex(key, ex=prefix_ttl())
        except Exception as exc:  # Redis down: route as if the prefix were new
            log.warning("prefix homes unavailable (%s: %s)", type(exc).__name__, exc)
            return None
        if value is None:
            return None
        self.local.put(key, int(value))
        return int(value)

    def spilled(self, key: str) -> bool:
        """A request of this prefix went elsewhere; True when its home should move."""
        hit, count = self.spills.get(key)
        count = count + 1 if hit else 1
        self.spills.put(key, count)
        return count >= MOVE_AFTER_SPILLS

    def kept(self, key: str) -> None:
        """A request of this prefix went home: its spills are no longer in a row."""
        self.spills.forget(key)

    async def claim(
        self, key: str, replica_id: int, *, move: bool = False, previous: int | None = None
    ) -> int:
        """Make `replica_id` the prefix's home unless another process did first (then
        theirs is the home, and returned); `move`: take it over from `previous` (gone, or
        too busy)."""
        self.kept(key)
        if move and previous is not None and self.claims[previous] > 0:
            self.claims[previous] -= 1
        if self.redis is not None:
            try:
                if await self.redis.set(key, replica_id, ex=prefix_ttl(), nx=not move):
                    winner = replica_id
                else:
                    value = await self.redis.get(key)
                    winner = int(value) if value is not None else replica_id
            except Exception as exc:
                log.warning("prefix homes unavailable (%s: %s)", type(exc).__name__, exc)
                winner = replica_id
        else:
            winner = replica_id
        if winner == replica_id:
            self.claims[replica_id] += 1
        self.local.put(key, winner)
        return winner

"""Per-key rate limits (requests and tokens per minute) in fixed one-minute windows.

With GATEWAY_REDIS_URL (or REDIS_URL) set, the counters live in Redis, so every gateway
process shares them; otherwise they are kept in this process (the embedded default has
one gateway process)."""

import time

from django.conf import settings

# KEYS: the token and request counters of this window; ARGV: the token and request limits
# (-1: none) and the counters' lifetime. 1 admits (and counts the request), 0 refuses.
ADMIT = """
local tpm, rpm = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm >= 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= tpm then return 0 end
if rpm >= 0 then
  local n = redis.call('INCR', KEYS[2])
  if redis.call('TTL', KEYS[2]) == -1 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
  if n > rpm then return 0 end
end
return 1
"""
# KEYS: a counter; ARGV: the amount and the counter's lifetime. Returns the new value.
ADD = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return n
"""


class Limiter:
    def __init__(self):
        url = getattr(settings, "GATEWAY_REDIS_URL", "")
        self.redis = None
        if url:
            import redis.asyncio as aioredis

            self.redis = aioredis.Redis.from_url(url)
            # One round trip per check and one per count, each atomic: a script costs the
            # gateway a third of the CPU of a GET followed by an INCRBY/EXPIRE pipeline,
            # and the CPU per request is what its throughput comes down to.
            self._admit = self.redis.register_script(ADMIT)
            self._add = self.redis.register_script(ADD)
        self.local: dict[str, int] = {}

    @staticmethod
    def window() -> tuple[int, int]:
        now = time.time()
        start = int(now // 60) * 60
        return start, max(1, int(start + 60 - now))

    async def _incr(self, key: str, amount: int, ttl: int) -> int:
        if self.redis is not None:
            return int(await self._add(keys=[key], args=[amount, ttl + 5]))
        self.local[key] = self.local.get(key, 0) + amount
        return self.local[key]

    async def admit(self, key_id: str, rpm: int | None, tpm: int | None) -> int | None:
        """None when the request may go; else the seconds until the window turns."""
        if rpm is None and tpm is None:
            return None
        start, left = self.window()
        tokens, requests = f"gantry:tpm:{key_id}:{start}", f"gantry:rpm:{key_id}:{start}"
        if self.redis is not None:
            limits = [-1 if tpm is None else tpm, -1 if rpm is None else rpm, left + 5]
            admitted = await self._admit(keys=[tokens, requests], args=limits)
            return None if admitted else left
        if tpm is not None and self.local.get(tokens, 0) >= tpm:
            return left
        if rpm is not None and await self._incr(requests, 1, left) > rpm:
            return left
        return None

    async def spend_tokens(self, key_id: str, tokens: int) -> None:
        if tokens:
            start, left = self.window()
            await self._incr(f"gantry:tpm:{key_id}:{start}", tokens, left)

"""Per-key rate limits (requests and tokens per minute) in fixed one-minute windows.

With GATEWAY_REDIS_URL (or REDIS_URL) set, the counters live in Redis, so every gateway
process shares them; otherwise they are kept in this process (the embedded default has
one gateway process)."""

import time

from django.conf import settings


class Limiter:
    def __init__(self):
        url = getattr(settings, "GATEWAY_REDIS_URL", "")
        self.redis = None
        if url:
            import redis.asyncio as aioredis

            self.redis = aioredis.Redis.from_url(url)
        self.local: dict[str, int] = {}

    @staticmethod
    def window() -> tuple[int, int]:
        now = time.time()
        start = int(now // 60) * 60
        return start, max(1, int(start + 60 - now))

    async def _incr(self, key: str, amount: int, ttl: int) -> int:
        if self.redis is not None:
            pipe = self.redis.pipeline()
            pipe.incrby(key, amount)
            pipe.expire(key, ttl + 5)
            value, _ = await pipe.execute()
            return int(value)
        self.local[key] = self.local.get(key, 0) + amount
        return self.local[key]

    async def _get(self, key: str) -> int:
        if self.redis is not None:
            return int(await self.redis.get(key) or 0)
        return self.local.get(key, 0)

    async def admit(self, key_id: str, rpm: int | None, tpm: int | None) -> int | None:
        """None when the request may go; else the seconds until the window turns."""
        start, left = self.window()
        if tpm is not None and await self._get(f"gantry:tpm:{key_id}:{start}") >= tpm:
            return left
        if rpm is not None:
            count = await self._incr(f"gantry:rpm:{key_id}:{start}", 1, left)
            if count > rpm:
                return left
        return None

    async def spend_tokens(self, key_id: str, tokens: int) -> None:
        if tokens:
            start, left = self.window()
            await self._incr(f"gantry:tpm:{key_id}:{start}", tokens, left)

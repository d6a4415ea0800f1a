"""A small in-process cache: a value per key, read again from the database after `ttl`
seconds. Misses are cached too (a `None` value), so an unknown key costs one lookup per ttl.
"""

import time


class Cache:
    def __init__(self, ttl: float):
        self.ttl, self.items = ttl, {}

    def get(self, key):
        hit = self.items.get(key)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return True, hit[1]
        return False, None

    def put(self, key, value) -> None:
        self.items[key] = (time.monotonic(), value)

    def forget(self, key) -> None:
        self.items.pop(key, None)

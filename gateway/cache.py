"""In-process caches: a value per key, read again from the database after a while.

`Cache` holds a few entries (organizations, regions); `KeyCache` holds API keys, which
anyone can make up, so it is bounded: least recently used keys go first, and a key found
unknown is remembered as unknown for its own (longer) time, so trying the same wrong key
again costs nothing while a new real key is still seen within seconds.
"""

import time
from collections import OrderedDict


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


class KeyCache:
    def __init__(self, *, size: int, ttl: float, negative_ttl: float):
        self.size, self.ttl, self.negative_ttl = size, ttl, negative_ttl
        self.items: OrderedDict = OrderedDict()  # key -> (expires at, value)

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key):
        hit = self.items.get(key)
        if hit is None:
            return False, None
        if time.monotonic() >= hit[0]:
            del self.items[key]
            return False, None
        self.items.move_to_end(key)
        return True, hit[1]

    def put(self, key, value) -> None:
        ttl = self.ttl if value is not None else self.negative_ttl
        self.items[key] = (time.monotonic() + ttl, value)
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def forget(self, key) -> None:
        self.items.pop(key, None)

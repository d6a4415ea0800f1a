"""Token usage on its way to the billing ledger: recorded by requests, written in batches by
one supervised background task, off the request path. Prices are billing's business: the
batch goes to `billing.services.meter_tokens_many`, which prices and appends it.

Invariants:
- Each request gets its ledger identity (a request id, hence the idempotency keys
  `tok:<request id>:<kind>`) when it is recorded, not when it is written. A batch retried
  after a partial success — the database committed but the answer was lost — therefore
  writes nothing twice: the ledger skips keys it already holds.
- Nothing recorded is dropped while the process runs: a failed write is logged and retried,
  the same batch, with growing pauses, while new usage keeps queueing behind it; no error
  ends the loop. On shutdown whatever is pending or queued is written, retried until a
  deadline; only a database still down at that deadline loses usage, and that is logged
  with the count.
"""

import asyncio
import logging
import os
import time
from datetime import UTC, datetime

from gateway.db import db
from gateway.routes import Route

log = logging.getLogger("gateway.metering")

BATCH_MAX = 5000
# Where a request's token counts come from, as the ledger records it.
ENGINE = "engine"  # the engine reported them
COUNTED = "counted"  # the engine did not: the gateway counted them (see `counting`)
# Usage counts above this are not a single request's: an engine reporting them is broken.
MAX_TOKENS_PER_REQUEST = 10_000_000


def usage_counts(usage) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) as an engine reported them, or None when it
    reported none or something that is not a pair of whole numbers within bounds: such
    usage is never believed (a negative count would be a credit) — it is counted instead.
    """

    def count(value) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return value if 0 <= value <= MAX_TOKENS_PER_REQUEST else None
        return None

    if not isinstance(usage, dict):
        return None
    prompt, completion = count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
    return None if prompt is None or completion is None else (prompt, completion)


def write_usage(batch: list[dict]) -> None:
    """One ledger write for a batch of requests (runs in a worker thread)."""
    from billing.services import meter_tokens_many

    meter_tokens_many(batch)


class Meter:
    def __init__(
        self,
        *,
        write=None,
        gather_s: float = 0.2,
        retry_s: float = 0.5,
        retry_max_s: float = 30.0,
        shutdown_s: float = 30.0,
    ):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.write = write or db(write_usage)
        self.gather_s = gather_s
        self.retry_s, self.retry_max_s = retry_s, retry_max_s
        self.shutdown_s = shutdown_s
        # The batch being written, off the queue but not yet in the ledger: kept here so
        # that stopping the loop at any await still writes it (see `stop`).
        self.pending: list[dict] = []
        self.failures = 0  # failed writes so far, for logs and tests
        self.task: asyncio.Task | None = None

    def record(
        self, route: Route, input_tokens: int, output_tokens: int, *, source: str = ENGINE
    ) -> None:
        if not (input_tokens or output_tokens):
            return
        self.queue.put_nowait(
            {
                "organization_id": route.organization_id,
                "request_id": os.urandom(16).hex(),  # random, as uuid4, at a fraction of its cost
                "deployment_id": route.deployment_id,
                "deployment_name": route.name,
                "model": route.name,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "at": datetime.now(UTC),
                "source": source,
            }
        )

    @property
    def idle(self) -> bool:
        """Everything recorded so far is in the ledger."""
        return not self.pending and self.queue.empty()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())
        self.task.add_done_callback(self._restart)

    def _restart(self, task: asyncio.Task) -> None:
        # `_write` never lets an error out, so this is for the error nobody foresaw: the
        # loop is started again, and its first act is to write the batch it was holding.
        if task.cancelled() or task is not self.task:
            return
        log.error("the meter's loop ended (%r); starting it again", task.exception())
        self.start()

    async def run(self) -> None:
        while True:
            if not self.pending:
                self.pending = [await self.queue.get()]
                # Wait a moment to gather a batch: one ledger write, not one per request.
                await asyncio.sleep(self.gather_s)
                self._take(BATCH_MAX)
            await self._write(self.pending)
            self.pending = []

    def _take(self, limit: int) -> None:
        while not self.queue.empty() and len(self.pending) < limit:
            self.pending.append(self.queue.get_nowait())

    async def _write(self, batch: list[dict], deadline: float | None = None) -> bool:
        """Write `batch`, retrying with a doubling pause until it is written (True) or,
        given a deadline, until the deadline has passed (False)."""
        pause = self.retry_s
        while True:
            try:
                await self.write(batch)
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Any error: a database outage, a lost connection, a deadlock. The batch
                # holds only ids, names and counts, so the message may be logged as is.
                self.failures += 1
                log.warning(
                    "could not write %d usage records to the ledger (%s: %s); retrying in %.1f s",
                    len(batch),
                    type(exc).__name__,
                    exc,
                    pause,
                )
            if deadline is not None and time.monotonic() + pause > deadline:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.retry_max_s)

    async def stop(self) -> None:
        """End the loop, then write what is pending and queued (called on shutdown, after
        the answers under way have finished). A write the loop had started may also have
        reached the database; writing its batch again is a no-op for the ledger."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        deadline = time.monotonic() + self.shutdown_s
        self._take(len(self.pending) + self.queue.qsize())
        if self.pending and not await self._write(self.pending, deadline):
            log.error(
                "the ledger stayed unreachable for %.0f s at shutdown: %d usage records "
                "were not written",
                self.shutdown_s,
                len(self.pending),
            )
        self.pending = []

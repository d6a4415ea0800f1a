"""The gateway's meter and load reports against the real database, broken and restored."""

import asyncio
import contextlib
import logging
import time

import pytest
from django.db import OperationalError, connections
from django.db.models import Sum

from billing.models import UsageRecord
from gateway.control import Load
from gateway.db import db
from gateway.metering import Meter, usage_counts, write_usage
from gateway.routes import Route
from tests.gateway.conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True)

DEPLOYMENT_ID = 4242


@contextlib.contextmanager
def database_unreachable():
    """New database connections go to a port nothing listens on, as when the database is
    down; the gateway opens a connection per call (gateway.db), so its next call fails.
    This thread's open connection (the test's own) is left alone."""
    params = connections["default"].settings_dict
    port = params["PORT"]
    params["PORT"] = str(free_port())
    try:
        yield
    finally:
        params["PORT"] = port


async def until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


def ledger() -> tuple[int, int, int]:
    rows = UsageRecord.objects.filter(deployment_id=DEPLOYMENT_ID)
    sums = {
        kind: rows.filter(kind=kind).aggregate(q=Sum("quantity"))["q"] or 0
        for kind in ("input_tokens", "output_tokens")
    }
    return rows.count(), sums["input_tokens"], sums["output_tokens"]


@pytest.fixture
def route(org_a):
    return Route(DEPLOYMENT_ID, "chat", org_a.pk, "running")


def test_the_database_is_reachable_only_through_the_closed_port_switch(route):
    async def write_once():
        await db(write_usage)([])

    with database_unreachable(), pytest.raises(OperationalError):
        asyncio.run(db(UsageRecord.objects.count)())
    asyncio.run(write_once())


def test_a_database_outage_delays_metering_and_loses_nothing(route, caplog):
    caplog.set_level(logging.WARNING, logger="gateway.metering")

    async def scenario() -> Meter:
        meter = Meter(gather_s=0.01, retry_s=0.02, retry_max_s=0.1)
        meter.start()
        for i in (1, 2, 3):
            meter.record(route, i, 10 * i)
        await until(lambda: meter.idle, "the first batch")
        with database_unreachable():
            for i in (4, 5, 6, 7):
                meter.record(route, i, 10 * i)
            await until(lambda: meter.failures >= 3, "several failed writes")
            meter.record(route, 8, 80)  # usage keeps coming in during the outage
            assert not meter.task.done()  # the loop lives on
        await until(lambda: meter.idle, "the backlog written once the database is back")
        meter.record(route, 9, 90)  # and metering goes on afterwards
        await until(lambda: meter.idle, "the batch after the outage")
        await meter.stop()
        return meter

    meter = asyncio.run(scenario())
    assert ledger() == (18, 45, 450)  # two records per request, each exactly once
    assert "could not write 4 usage records to the ledger (OperationalError" in caplog.text
    assert meter.failures >= 3


def test_a_batch_retried_after_the_database_took_it_counts_once(route):
    """The database commits, then the connection drops before the answer: the meter
    cannot tell, so it writes the same batch again; the ledger keeps each record once."""
    real = db(write_usage)
    attempts = []

    async def commit_then_lose_the_answer(batch):
        await real(batch)
        attempts.append(len(batch))
        if len(attempts) == 1:
            raise OperationalError("server closed the connection unexpectedly")

    async def scenario():
        meter = Meter(write=commit_then_lose_the_answer, gather_s=0.01, retry_s=0.01)
        meter.start()
        meter.record(route, 7, 70)
        meter.record(route, 5, 50)
        await until(lambda: meter.idle, "the retried batch")
        await meter.stop()

    asyncio.run(scenario())
    assert attempts == [2, 2]
    assert ledger() == (4, 12, 120)


def test_stopping_writes_what_was_recorded_even_before_the_loop_took_it(route):
    async def scenario():
        meter = Meter(gather_s=10)  # the loop would wait long before it writes
        meter.start()
        meter.record(route, 3, 30)
        await asyncio.sleep(0)  # the loop takes the item and starts gathering a batch
        meter.record(route, 4, 40)
        await meter.stop()

    asyncio.run(scenario())
    assert ledger() == (4, 7, 70)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -5, "completion_tokens": -100},
        {"prompt_tokens": "12", "completion_tokens": 3.5},
        {"prompt_tokens": True, "completion_tokens": None},
        {"prompt_tokens": 10**12, "completion_tokens": [1]},
        ["prompt_tokens", 3],
        None,
    ],
)
def test_engine_usage_that_is_not_a_sane_count_is_never_metered(usage):
    assert usage_counts(usage) == (0, 0)


def test_usage_counts_keep_what_the_engine_reported():
    assert usage_counts({"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}) == (
        9,
        6,
    )


def test_load_reports_that_fail_are_logged_and_sent_with_the_next_report(org_a, local_pool, caplog):
    from deployments.models import Deployment, DeploymentLoad, GpuType, TrafficMinute

    caplog.set_level(logging.WARNING, logger="gateway.control")
    d = Deployment.objects.create(
        organization=org_a,
        name="reported",
        model_ref="x/y",
        engine="vllm",
        gpu_type=GpuType.objects.get(code="cpu"),
        regions=["local"],
        status="running",
    )

    async def scenario():
        load = Load()
        load.requests[d.pk] += 2
        load.observe(d.pk, 200, 15, 0.01)
        load.observe(d.pk, 502, 0, 0.02)
        with database_unreachable():
            await load.report()  # fails, and says so; the counts are kept
        assert load.traffic and load.requests[d.pk] == 2
        await load.report()

    asyncio.run(scenario())
    assert "could not report traffic of deployment" in caplog.text
    assert "could not report load of deployment" in caplog.text
    minute = TrafficMinute.objects.get(deployment=d)
    assert (minute.requests, minute.errors, minute.tokens) == (2, 1, 15)
    assert DeploymentLoad.objects.get(deployment=d).last_request_at is not None

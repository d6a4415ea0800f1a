"""The one way the async gateway touches Django's ORM: a plain function run in a worker
thread, whose database connection is closed when it returns.

Reads are rare (everything read is cached for seconds) and the executor's threads come and
go, so a connection left open per thread would only linger; closing it each time also means
a database that went away and came back is simply reconnected to on the next call.
"""

from asgiref.sync import sync_to_async
from django.db import connection


def db(fn):
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    # Not thread-sensitive: calls run side by side, off the event loop, and never share
    # Django's one "main" thread with each other.
    return sync_to_async(call, thread_sensitive=False)

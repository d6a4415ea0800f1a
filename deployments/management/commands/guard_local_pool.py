import os
import signal
import threading
import time

from django.core.management.base import BaseCommand

from deployments.drivers.local import INSTANCE, instance_processes, terminate
from deployments.services import local_pools_shutdown

# honcho SIGKILLs what is still running 5 s after it sent SIGTERM; the guard finishes first.
SETTLE_S = 4.0


def _ancestors() -> set[int]:
    """This process's parents up to init: honcho and the shell around it carry the
    instance marker too, and outlive the guard by design."""
    found, pid = set(), os.getpid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                pid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (FileNotFoundError, IndexError, ValueError):
            break
        found.add(pid)
    return found


class Command(BaseCommand):
    help = (
        "Wait until told to stop (SIGTERM or SIGINT), then stop the local pool's replicas. "
        "`make run` runs it beside the web server and worker, so one Ctrl-C (or a SIGTERM "
        "to make) also ends the engine processes the local driver started."
    )

    def handle(self, *args, **options):
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.stdout.write("guarding the local pool's replicas", ending="\n")
        self.stdout.flush()
        done.wait()
        deadline = time.monotonic() + SETTLE_S
        instance = os.environ.get(INSTANCE, "")
        if instance:
            # All engines at once first: stopping them one by one could outlast honcho's
            # patience, and whatever is still running then is killed with no record.
            terminate(instance_processes(instance, engines_only=True), grace=2.0)
        stopped = local_pools_shutdown()
        self.stdout.write(f"stopped {stopped} local replica(s)")
        if not instance:
            return
        # A worker stopping at the same time may be half-way through starting an engine:
        # sweep until the instance's other processes (web, worker, beat) are gone.
        mine = _ancestors()
        while True:
            terminate(instance_processes(instance, engines_only=True), grace=0.5)
            others = set(instance_processes(instance)) - mine
            if not others or time.monotonic() > deadline:
                break
            time.sleep(0.1)

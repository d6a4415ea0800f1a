import signal
import threading

from django.core.management.base import BaseCommand

from deployments.services import local_pools_shutdown


class Command(BaseCommand):
    help = (
        "Wait until told to stop (SIGTERM or SIGINT), then stop the local pool's replicas. "
        "`make run` runs it beside the web server and worker, so one Ctrl-C also ends the "
        "engine processes the local driver started."
    )

    def handle(self, *args, **options):
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.stdout.write("guarding the local pool's replicas", ending="\n")
        self.stdout.flush()
        done.wait()
        stopped = local_pools_shutdown()
        self.stdout.write(f"stopped {stopped} local replica(s)")

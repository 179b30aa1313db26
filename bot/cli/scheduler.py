"""`scheduler`: the scheduler process (exactly one is active)."""

from __future__ import annotations

from flask import Flask

from bot.cli.common import cli_service


def register(app: Flask) -> None:
    """Attach the `scheduler` command."""

    @app.cli.command("scheduler")
    def scheduler_command() -> None:
        """The scheduler process: exactly one is active, others wait as standbys."""
        import signal
        import threading

        from scheduler.runner import run_scheduler

        service = cli_service()
        stop = threading.Event()
        # SIGTERM or Ctrl-C: finish the running job, let the lease go (a standby takes over at once).
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        run_scheduler(service, stop)

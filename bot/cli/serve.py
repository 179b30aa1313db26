"""`serve [--host H] [--port P]`: a web server in the foreground (production: gunicorn)."""

from __future__ import annotations

import click
from flask import Flask, current_app
from werkzeug.serving import WSGIRequestHandler

from bot.cli.common import cli_service, say
from bot.redact import redact


class RedactingRequestHandler(WSGIRequestHandler):
    """`serve`'s request log (werkzeug's), without bearer links, as gunicorn's access log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log the request line with any link token redacted."""
        # The response is under way (the application has run): these are read only to be logged now.
        self.requestline = redact(self.requestline)
        if isinstance(getattr(self, "path", None), str):
            self.path = redact(self.path)
        super().log_request(code, size)


def register(app: Flask) -> None:
    """Attach the `serve` command."""

    @app.cli.command("serve")
    @click.option("--host", default="127.0.0.1")
    @click.option("--port", default=8000, type=int)
    def serve(host: str, port: int) -> None:
        """A web server in the foreground, every route, until Ctrl-C or SIGTERM (production: gunicorn
        'bot:create_app()')."""
        import signal

        from werkzeug.serving import run_simple

        cli_service()  # the schema must be current
        from bot import warm_up  # noqa: PLC0415

        warm_up(current_app._get_current_object())  # as a gunicorn worker does before it serves

        def stop(signum: int, frame: object) -> None:
            raise KeyboardInterrupt  # werkzeug's serve_forever ends on it and closes the socket

        # Not app.run(): under a FlaskGroup (FLASK_RUN_FROM_CLI) it returns at once without serving.
        signal.signal(signal.SIGTERM, stop)
        run_simple(host, port, current_app._get_current_object(), threaded=True, use_reloader=False,
                   request_handler=RedactingRequestHandler)
        say("serve_stopped")

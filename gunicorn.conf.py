"""gunicorn's settings for the web, read from the working directory by `gunicorn 'bot:create_app()'`.

Options on the command line override these (the bench runs `--workers 2`, the Dockerfile adds the
bind address and the access log).
"""

import os

# Two processes a core on the 2-core server we size for; WEB_CONCURRENCY sets another number.
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
# gevent: a worker serves many requests at once, each switching out while it waits on the database
# or Redis. Recordings that arrive while a recording statement runs are written together by the next
# one (models.scores.RecordingWriter), and a WeChat retry waiting for its twin's reply holds a
# greenlet, not a worker. Per request it costs less CPU than threads do (bench/webhook.py).
worker_class = "gevent"
worker_connections = 100
# A client has this many seconds to send a request's line and headers, the next one on a kept-alive
# connection included; then gunicorn closes the connection (an idle or a slow client holds no greenlet).
keepalive = 2
# WeChat gives a callback 5 s; a worker stuck longer than this is of no use to anyone.
timeout = 30
graceful_timeout = 10

# ── metrics across workers ───────────────────────────────────────────────────
# prometheus-client's multiprocess mode: each worker writes its counts to files in this directory and
# /metrics, whichever worker answers, sums them. It must be in the environment before a worker imports
# prometheus_client, so it is set here, in the master, before any worker is forked. A directory given
# by the operator is used (and emptied on start); otherwise a fresh one, removed on exit.
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="czk-metrics-")


def on_starting(server):  # noqa: ANN001, ANN201
    """Counts of an earlier run of the master are not this run's. prometheus_client is imported
    here, in the master before any worker is forked (the directory is already in the environment),
    so that child_exit never imports it: it runs in the SIGCHLD handler, and a second worker exiting
    during that import re-entered it half done (ImportError, and the master exited 1 on SIGTERM)."""
    import glob

    import prometheus_client.multiprocess  # noqa: F401

    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)


def child_exit(server, worker):  # noqa: ANN001, ANN201
    """A dead worker's counters still count; its live gauges (if any) no longer do."""
    from prometheus_client import multiprocess  # already imported by on_starting

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # noqa: ANN001, ANN201
    """A worker has loaded the app (after the fork, gevent patched): load what its first request would
    otherwise wait for (bot.warm_up), before it accepts connections. Another app run from this
    directory (bench/bare_app.py's baselines) has nothing of ours to warm."""
    if "czk" not in getattr(worker.wsgi, "extensions", {}):
        return
    from bot import warm_up

    warm_up(worker.wsgi)


def on_exit(server):  # noqa: ANN001, ANN201
    if _OWN_METRICS_DIR:
        import shutil

        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


# ── an access log without bearer links ───────────────────────────────────────
# `/export/<token>` and `t=`/`token=` query parameters are written as [redacted] (bot/redact.py,
# loaded by path: importing the `bot` package here, in the master, would import the app's
# dependencies before gevent patches the workers).
def _load_redact():  # noqa: ANN202
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "czk_redact", os.path.join(os.path.dirname(os.path.abspath(__file__)), "bot", "redact.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.redact


def _redacting_logger():  # noqa: ANN202
    from gunicorn.glogging import Logger

    redact = _load_redact()

    class RedactingLogger(Logger):
        """gunicorn's logger, with every text atom of an access-log line redacted."""

        def atoms(self, resp, req, environ, request_time):  # noqa: ANN001, ANN201
            return {k: redact(v) if isinstance(v, str) else v
                    for k, v in super().atoms(resp, req, environ, request_time).items()}

    return RedactingLogger


logger_class = _redacting_logger()

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
# WeChat gives a callback 5 s; a worker stuck longer than this is of no use to anyone.
timeout = 30
graceful_timeout = 10

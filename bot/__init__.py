"""储值卡助手: the Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask

from bot.service import make_service
from core.config import Settings, load_settings
from models.service import Service

log = logging.getLogger(__name__)

# The page templates a first view would otherwise compile.
PAGE_TEMPLATES = ("pages/card.html", "pages/class.html", "pages/dashboard.html")


def create_app(settings: Settings | dict | None = None, service: Service | None = None) -> Flask:
    """Build the web app (WeCom and Official Account callbacks, health) and register the CLI commands."""
    if service is None:
        if not isinstance(settings, Settings):
            settings = load_settings(settings)
        service = make_service(settings, background=True)  # the callback never waits for the risk check
    app = Flask(__name__, instance_relative_config=False)
    # No app.config["SECRET_KEY"]: nothing here uses Flask's cookie session (export links are signed with
    # settings.secret_key directly), and without it Flask skips building a signing serializer per request.
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # WeCom callbacks are a few KB at most
    app.extensions["czk"] = service
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from bot.cli import register_cli
    from bot.pages import pages
    from bot.web import web

    app.register_blueprint(web)
    app.register_blueprint(pages)
    if service.settings.wecom_enabled:
        from bot.channels.wecom import wecom

        app.register_blueprint(wecom)
    from bot.channels import mp

    if mp.enabled(service.settings):
        app.register_blueprint(mp.mp)
    register_cli(app)
    return app


def warm_up(app: Flask) -> None:
    """What the first request a worker serves would otherwise pay: the roster snapshot (0.3 s at
    15,000 students) and the pages' templates. gunicorn.conf.py calls it once a worker has loaded the
    app, before it accepts connections, and `serve` before it listens. A database that does not
    answer yet is no reason not to start: the first request then loads the snapshot itself."""
    service: Service = app.extensions["czk"]
    try:
        service.directory.get(service.sessions)
    except Exception as exc:  # noqa: BLE001 - logged by type only; the worker starts all the same
        log.warning("roster not loaded at start (%s): the first request loads it", type(exc).__name__)
    for name in PAGE_TEMPLATES:
        app.jinja_env.get_template(name)

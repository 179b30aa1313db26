"""Plain web routes: health check, metrics, signed workbook downloads; the callbacks' timing."""

from __future__ import annotations

import hmac
import logging
import time

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from bot import metrics
from core.metrics import callback_answered
from models.errors import log_failure

log = logging.getLogger(__name__)

web = Blueprint("web", __name__)

# Blueprints whose routes are chat callbacks, timed by channel (WeChat waits 5 s for an answer).
CALLBACK_CHANNELS = frozenset({"wecom", "mp"})


@web.before_app_request
def _start_clock() -> None:
    g.czk_started = time.perf_counter()


@web.teardown_app_request
def _time_callback(_exc: BaseException | None) -> None:
    """The whole callback, from the request's arrival to its answer, by channel (errors included)."""
    started = g.pop("czk_started", None)
    if started is not None and request.blueprint in CALLBACK_CHANNELS:
        callback_answered(request.blueprint, time.perf_counter() - started)


@web.app_errorhandler(Exception)
def _unexpected(exc: Exception) -> Response | HTTPException:
    """An error no route handled: logged by its route's pattern and error code, never by the path
    (a link token) or the exception's message (it may quote data); a plain 500 for the caller."""
    if isinstance(exc, HTTPException):
        return exc
    rule = request.url_rule.rule if request.url_rule is not None else "-"
    log_failure(log, f"error answering {request.method} {rule}", exc)
    return Response("internal error\n", status=500, mimetype="text/plain")


@web.get("/metrics")
def metrics_view() -> Response:
    """Prometheus text across all workers (§5); with METRICS_TOKEN set, only for its bearer."""
    service = current_app.extensions["czk"]
    token = service.settings.metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return Response("unauthorized\n", status=401, mimetype="text/plain",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    from prometheus_client import CONTENT_TYPE_LATEST

    response = Response(metrics.exposition(service), status=200)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    response.headers["Cache-Control"] = "no-store"
    return response


@web.get("/healthz")
def healthz():  # noqa: ANN201
    """200 while the database answers (Redis reported, not required: the service goes on without
    it); 503 naming the part that failed otherwise, for the load balancer and the monitoring."""
    service = current_app.extensions["czk"]
    try:
        with service.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("health check: database unavailable (%s)", type(exc).__name__)
        return jsonify(status="error", database="error", redis=_redis_state(service)), 503
    return jsonify(status="ok", database="ok", redis=_redis_state(service))


def _redis_state(service) -> str:  # noqa: ANN001
    """"ok" when Redis answers a ping; "absent" when it is not configured or does not answer."""
    if not service.settings.redis_url:
        return "absent"
    import redis

    try:
        client = redis.Redis.from_url(service.settings.redis_url, socket_connect_timeout=0.3, socket_timeout=0.3)
        try:
            return "ok" if client.ping() else "absent"
        finally:
            client.close()
    except redis.RedisError:
        return "absent"


@web.get("/export/<token>")
def export_download(token: str):  # noqa: ANN201
    """A class's workbook behind a signed, expiring link (导出 <班级>): 200 xlsx, else 403/404/410."""
    import io

    from flask import send_file
    from itsdangerous import BadData, SignatureExpired

    from core.render import render
    from handlers.export import XLSX, export_filename, export_workbook, link_max_age, may_export, read_export
    from models.authz import load_actor
    from models.schema import SchoolClass

    service = current_app.extensions["czk"]

    def plain(template: str, status: int) -> Response:
        return Response(render(template, hours=service.settings.export_link_hours), status=status,
                        mimetype="text/plain")

    try:
        class_id, requester = read_export(service.settings.secret_key, token, link_max_age(service.settings))
    except SignatureExpired:
        return plain("chat/export_expired.txt", 410)
    except BadData:
        return plain("chat/export_invalid.txt", 403)
    today = service.today()
    with service.sessions() as session:
        klass = session.get(SchoolClass, class_id)
        if klass is None:
            return plain("chat/export_gone.txt", 404)
        actor = load_actor(session, requester)
        if actor is None or not may_export(actor, klass.id):
            return plain("chat/export_forbidden.txt", 403)
        data = export_workbook(session, service.catalogue, klass, actor, today)
        name = export_filename(klass, today)
    response = send_file(io.BytesIO(data), mimetype=XLSX, as_attachment=True, download_name=name, max_age=0)
    response.headers["Cache-Control"] = "private, no-store"
    return response

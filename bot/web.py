"""Plain web routes: health check, signed workbook downloads."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

web = Blueprint("web", __name__)


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

    from bot.templating import render
    from handlers.export import LINK_HOURS, XLSX, export_filename, export_workbook, may_export, read_export
    from models.authz import load_actor
    from models.schema import SchoolClass

    def plain(template: str, status: int) -> Response:
        return Response(render(template, hours=LINK_HOURS), status=status, mimetype="text/plain")

    service = current_app.extensions["czk"]
    try:
        class_id, requester = read_export(service.settings.secret_key, token)
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

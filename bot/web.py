"""Plain web routes: health check, signed workbook downloads."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

web = Blueprint("web", __name__)


@web.get("/healthz")
def healthz():  # noqa: ANN201
    """Liveness and database reachability, for the load balancer."""
    service = current_app.extensions["czk"]
    with service.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return jsonify(status="ok")


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

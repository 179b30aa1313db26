"""Plain web routes: health check."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

web = Blueprint("web", __name__)


@web.get("/healthz")
def healthz():  # noqa: ANN201
    """Liveness and database reachability, for the load balancer."""
    service = current_app.extensions["czk"]
    with service.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return jsonify(status="ok")

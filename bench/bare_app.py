"""The baseline for bench/webhook.py: a bare WeCom callback that only verifies, decrypts and echoes.

Run as `gunicorn -w 2 'bench.bare_app:create_bare_app()'` with WECOM_TOKEN, WECOM_AES_KEY and
WECOM_CORP_ID set. It does the WeChat work our endpoint cannot avoid (screen, parse, check the
signature, decrypt, parse, build and encrypt a passive reply) and nothing else, so the ratio of
our throughput to this one's says what the product adds on top of the protocol.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable

import psycopg
import xmltodict
from flask import Flask, Response, request
from wechatpy.enterprise.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException

DTD_MARKUP = re.compile(r"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)


def _cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def create_bare_app(keep: Callable[[dict], None] | None = None) -> Flask:
    """A Flask app with /healthz and an echoing POST /wechat/wecom (`keep`: called with each
    decrypted message before the reply)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    corp_id = os.environ["WECOM_CORP_ID"]
    crypto = WeChatCrypto(os.environ["WECOM_TOKEN"], os.environ["WECOM_AES_KEY"], corp_id)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok", mimetype="text/plain")

    @app.post("/wechat/wecom")
    def echo() -> Response:
        args = request.args
        body = request.get_data(as_text=True)
        if DTD_MARKUP.search(body):
            return Response("bad request", 400)
        try:
            envelope = xmltodict.parse(body)["xml"]
            inner = crypto.decrypt_message({"Encrypt": envelope["Encrypt"]}, args["msg_signature"],
                                           args["timestamp"], args["nonce"])
            msg = xmltodict.parse(inner)["xml"]
        except InvalidSignatureException:
            return Response("invalid signature", 403)
        except Exception:  # noqa: BLE001 - a baseline: anything malformed is a 400
            return Response("bad request", 400)
        if keep is not None:
            keep(msg)
        xml = (f"<xml><ToUserName>{_cdata(msg['FromUserName'])}</ToUserName>"
               f"<FromUserName>{_cdata(corp_id)}</FromUserName><CreateTime>{int(time.time())}</CreateTime>"
               f"<MsgType><![CDATA[text]]></MsgType><Content>{_cdata(msg.get('Content') or '')}</Content></xml>")
        return Response(crypto.encrypt_message(xml, args["nonce"], args["timestamp"]), mimetype="application/xml")

    return app


def create_floor_app() -> Flask:
    """The bare endpoint plus one durable write per message: its MsgId into a one-column table,
    committed (autocommit, PostgreSQL's default synchronous commit) before the reply.

    A reference, not a target: what any service that keeps a record of each message before it
    answers spends on top of the protocol, on the same machine. `DATABASE_URL` is our psycopg URL.
    """
    dsn = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        # Every worker runs this at boot: IF NOT EXISTS alone races (a duplicate pg_type row).
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('bench_floor'))")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (msg_id text PRIMARY KEY)")
    local = threading.local()

    def keep(msg: dict) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(dsn, autocommit=True)
        conn.execute("INSERT INTO bench_floor VALUES (%s) ON CONFLICT DO NOTHING", (msg.get("MsgId"),))

    return create_bare_app(keep)

"""`python -m bot serve` and `gunicorn 'bot:create_app()'` as processes: both answer on /healthz and on
the WeCom callback (URL verification with WeCom's published sample, an encrypted message from a
teacher), and stop cleanly on SIGTERM and Ctrl-C."""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy.engine import Engine

from bot.cli.db import upgrade_database
from models.db import make_engine, make_sessionmaker
from tests.edges.test_wecom import SAMPLE, WeComSender, text_xml
from tests.fakes.factories import small_college
from tests.fakes.processes import free_port
from tests.outside.conftest import bot_env, scalar, web_process

# WeCom's published sample app: its URL verification is what WeCom itself sent to a real server.
WECOM = dict(WECOM_CORP_ID=SAMPLE["corp_id"], WECOM_TOKEN=SAMPLE["token"], WECOM_AES_KEY=SAMPLE["aes_key"],
             WECOM_AGENT_ID="1000002", WECOM_SECRET="secret", WECOM_API_BASE="http://127.0.0.1:1/cgi-bin/")


@pytest.fixture(scope="module")
def college(fresh_db: str) -> Iterator[str]:
    """The module's database, migrated, with a small college (王芳 teaches 计算机2301)."""
    upgrade_database(fresh_db)
    engine = make_engine(fresh_db)
    with make_sessionmaker(engine)() as session:
        small_college(session)
    engine.dispose()
    yield fresh_db


def answers_like_the_service(base: str, message: str, db: Engine, student_no: str) -> None:
    """What WeCom and a load balancer see: health, URL verification, a recorded message, and its row."""
    health = requests.get(base + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text

    params = {k: SAMPLE[k] for k in ("msg_signature", "timestamp", "nonce", "echostr")}
    verified = requests.get(base + "/wechat/wecom", params=params, timeout=10)
    assert verified.status_code == 200 and verified.text == SAMPLE["plain"], verified.text
    forged = requests.get(base + "/wechat/wecom", params=dict(params, msg_signature="0" * 40), timeout=10)
    assert forged.status_code == 403

    wecom = WeComSender(base, SAMPLE["token"], SAMPLE["aes_key"], SAMPLE["corp_id"])
    reply = wecom.reply(wecom.post(text_xml("wangfang", message)))
    assert reply is not None and reply["ToUserName"] == "wangfang"
    assert "已记录 1 条" in reply["Content"], reply["Content"]
    assert scalar(db, "SELECT count(*) FROM score_entry e JOIN student s ON s.id = e.student_id "
                      f"WHERE s.student_no = '{student_no}' AND e.revoked_at IS NULL") == 1


def test_serve_answers_every_route_until_sigterm(college, db, tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "bot", "serve", "--port", str(port)]
    with web_process(argv, bot_env(college, **WECOM), port, tmp_path / "serve.log") as server:
        answers_like_the_service(server.base, "全勤率 张三 95", db, "2023010101")
        assert server.stop(signal.SIGTERM) == 0, server.output()
    assert "Ignoring a call" not in server.output()
    assert "Traceback" not in server.output()


def test_serve_stops_on_ctrl_c(college, tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with web_process(argv, bot_env(college), port, tmp_path / "serve.log") as server:
        assert requests.get(server.base + "/healthz", timeout=10).json()["status"] == "ok"
        assert server.stop(signal.SIGINT, group=True) == 0, server.output()  # Ctrl-C: the terminal's group
    assert "Traceback" not in server.output()


def test_gunicorn_from_the_repository_root_answers_both_routes(college, db, tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2", "bot:create_app()"]
    env = bot_env(college, APP_ENV="production", **WECOM)
    with web_process(argv, env, port, tmp_path / "gunicorn.log") as server:
        answers_like_the_service(server.base, "全勤率 李四 90", db, "2023010102")
        assert "Using worker: gevent" in server.output()  # gunicorn.conf.py was read
        idle, dripping = _silent_client(port), _dripping_client(port)
        assert idle == b"", idle  # closed: a connection that sends nothing holds no greenlet for long
        assert dripping.startswith(b"HTTP/1.1 400") or dripping == b"", dripping  # a head trickled in is cut off
        answers_like_the_service(server.base, "全勤率 王五 85", db, "2023010103")  # and the workers serve on
        assert server.stop(signal.SIGTERM) == 0, server.output()
    assert "Traceback" not in server.output()


def _silent_client(port: int) -> bytes:
    """Connect and send nothing: what the server does with the connection within 10 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.recv(1024)  # b"": closed by the server (gunicorn.conf.py's keepalive, 2 s)


def _dripping_client(port: int) -> bytes:
    """A request head sent a byte every 0.5 s (a slow client, or slowloris): what the server
    answers before 10 s have passed (the head would take 20 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /wechat/wecom HTTP/1.1\r\n")
        try:
            for byte in b"X-Slow: " + b"a" * 12:
                sock.sendall(bytes([byte]))
                time.sleep(0.5)
        except OSError:  # reset: the server closed the connection
            return b""
        return sock.recv(1024)

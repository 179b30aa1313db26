"""Failures are logged and stored by type, code and place, never by what they quote (PRODUCT.md §6):
a database error's message carries the values of its statement (PostgreSQL's DETAIL even with
`hide_parameters`), an exception's message may carry the text it was given. And request logs do not
keep bearer links."""

from __future__ import annotations

import logging
import threading

import pytest
import requests
from werkzeug.serving import make_server

from bot import create_app
from bot.cli.serve import RedactingRequestHandler
from bot.redact import redact
from core.messages import Reply
from handlers.registry import Command, registry
from models.errors import error_code, log_failure, safe_traceback
from models.schema import ProcessedMessage
from scheduler.registry import JOBS, Job
from scheduler.runner import run_job
from tests.fakes.chat import make_service, say
from tests.fakes.factories import small_college

SECRET = "张三 心理辅导 情绪低落"


def _duplicate_row(session, key: str) -> None:
    """Two rows under one unique key: the database refuses, naming the key in its message."""
    session.add(ProcessedMessage(msg_key=key, sender="x", reply=""))
    session.flush()
    session.add(ProcessedMessage(msg_key=key, sender="x", reply=""))
    session.flush()


def test_a_failed_job_keeps_its_error_code_not_its_data(db_url, today, session, caplog, monkeypatch):
    def leaky_job(ctx) -> str:
        _duplicate_row(ctx.session, SECRET)
        return "never"

    monkeypatch.setitem(JOBS, "leaky_job", Job("leaky_job", leaky_job, {"hour": "3"}, "fails on purpose"))
    service = make_service(db_url, today)
    caplog.set_level(logging.INFO)
    run = run_job(service, "leaky_job")
    assert run.status == "error"
    assert run.result.startswith("error: IntegrityError/"), run.result  # 23505, or SQLite's constraint name
    assert "张三" not in run.result and "张三" not in caplog.text, caplog.text
    assert "job leaky_job failed: IntegrityError" in caplog.text and "leaky_job" in caplog.text
    assert "File " in caplog.text  # where it failed is kept
    assert f"job name=leaky_job run={run.id} status=error" in caplog.text
    service.engine.dispose()


def test_a_message_that_fails_is_logged_without_its_text_or_sender(db_url, today, session, caplog, monkeypatch):
    small_college(session)

    def explodes(msg, args, ctx) -> Reply:
        if args.startswith("数据库"):
            _duplicate_row(ctx.session, msg.text)
        raise ValueError(f"cannot handle {msg.text!r} from {msg.sender}")

    monkeypatch.setattr(registry, "commands", [*registry.commands, Command(("试炸",), explodes, "anyone", "")])
    service = make_service(db_url, today)
    caplog.set_level(logging.INFO)
    first = say(service, "wangfang", f"试炸 {SECRET}")
    second = say(service, "wangfang", f"试炸 数据库 {SECRET}")
    assert "出错" in first or "稍后" in first, first  # the polite apology
    assert second == first
    assert "张三" not in caplog.text and "wangfang" not in caplog.text, caplog.text
    assert "ValueError" in caplog.text and "IntegrityError" in caplog.text
    assert caplog.text.count("command=试炸 outcome=error") == 2, caplog.text
    service.engine.dispose()


def test_safe_traceback_names_types_codes_and_frames_only():
    who, value = SECRET.split()[0], 9573
    try:
        try:
            {}[who]
        except KeyError as inner:
            raise RuntimeError(f"value {value} for {who}") from inner
    except RuntimeError as exc:
        text = safe_traceback(exc)
        assert error_code(exc) == "RuntimeError"
    assert "KeyError" in text and "RuntimeError" in text and "test_log_privacy.py" in text
    assert "{}[who]" in text  # frames and their source lines are kept
    assert "张三" not in text and "9573" not in text, text

    class Refused(Exception):
        errcode = 45009

    assert error_code(Refused()) == "Refused/45009"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("test.log_privacy")
    log.addHandler(handler)
    try:
        log_failure(log, "outbox flush failed", Refused("张三"))
    finally:
        log.removeHandler(handler)
    assert records and "张三" not in records[0].getMessage() and "Refused/45009" in records[0].getMessage()


@pytest.mark.parametrize(("line", "expected"), [
    ("GET /export/eyJhbGciOi.abc-DEF_1 HTTP/1.1", "GET /export/[redacted] HTTP/1.1"),
    ("GET /h5/login?t=tok123&next=/h5/card HTTP/1.1", "GET /h5/login?t=[redacted]&next=/h5/card HTTP/1.1"),
    ("t=tok123&x=1", "t=[redacted]&x=1"),
    ("https://college.example/page?token=abc", "https://college.example/page?token=[redacted]"),
    ("GET /h5/auth/wecom/callback?code=CODE123&state=ab12cd HTTP/1.1",
     "GET /h5/auth/wecom/callback?code=[redacted]&state=[redacted] HTTP/1.1"),
    ("POST /wechat/wecom?msg_signature=ab12&timestamp=1&nonce=2 HTTP/1.1",
     "POST /wechat/wecom?msg_signature=ab12&timestamp=1&nonce=2 HTTP/1.1"),
])
def test_bearer_links_are_redacted(line, expected):
    assert redact(line) == expected


def test_serve_request_log_redacts_export_links(db_url, today, session, caplog):
    service = make_service(db_url, today)
    server = make_server("127.0.0.1", 0, create_app(service=service), threaded=True,
                         request_handler=RedactingRequestHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    caplog.set_level(logging.INFO, logger="werkzeug")
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert requests.get(base + "/export/not-a-valid-token-123", timeout=10).status_code == 403
        assert requests.get(base + "/healthz?t=secret-456", timeout=10).status_code == 200
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
        service.engine.dispose()
    assert "/export/[redacted]" in caplog.text and "/healthz?t=[redacted]" in caplog.text, caplog.text
    assert "not-a-valid-token-123" not in caplog.text and "secret-456" not in caplog.text

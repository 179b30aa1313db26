"""The WeCom edge over real HTTP: callbacks encrypted as WeCom encrypts them, and the API client
against a local fake WeCom API server."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import date, datetime
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
import requests
import xmltodict
from sqlalchemy import func, select
from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto
from werkzeug.serving import make_server

from bot import create_app
from bot.service import make_service
from core.config import ROOT, Settings, load_settings
from models.schema import AuditLog, ProcessedMessage, ScoreEntry
from tests.fakes.fake_wecom import FakeWeCom
from tests.fakes.threads import at_once
from wechat.wecom_api import WeComAPI, WeComAPIError

CORP_ID = "ww4d1f6a0c2b3e5f70"
TOKEN = "czkToken2025"
AES_KEY = base64.b64encode(bytes(range(32))).decode().rstrip("=")
AGENT_ID = "1000002"
REDIS_DOWN = "redis://127.0.0.1:1/0"  # nothing listens on port 1

# The published WeCom sample for URL verification.
SAMPLE = dict(token="QDG6eK", aes_key="jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", corp_id="wx5823bf96d3bd56c7",
              msg_signature="5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3", timestamp="1409659589",
              nonce="263014780",
              echostr="P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
              plain="1616140317555161061")

_msg_ids = itertools.count(int(time.time() * 1000) % 10**12 * 1000)


def new_msg_id() -> str:
    # Unique across runs too: the Redis claims of an earlier run must not match.
    return str(next(_msg_ids))


# ── WeCom's side of the wire ─────────────────────────────────────────────────

def signature(token: str, *parts: str) -> str:
    return hashlib.sha1("".join(sorted([token, *parts])).encode()).hexdigest()


def text_xml(sender: str, content: str, msg_id: str | None = None) -> str:
    return (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[{sender}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id or new_msg_id()}</MsgId>"
            f"<AgentID>{AGENT_ID}</AgentID></xml>")


def image_xml(sender: str) -> str:
    return (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[{sender}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[image]]></MsgType>"
            "<PicUrl><![CDATA[http://127.0.0.1/p.jpg]]></PicUrl><MediaId><![CDATA[media1]]></MediaId>"
            f"<MsgId>{new_msg_id()}</MsgId><AgentID>{AGENT_ID}</AgentID></xml>")


def event_xml(sender: str, event: str, create_time: int | None = None, key: str = "") -> str:
    return (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[{sender}]]></FromUserName>"
            f"<CreateTime>{create_time or int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[{event}]]></Event><EventKey><![CDATA[{key}]]></EventKey>"
            f"<AgentID>{AGENT_ID}</AgentID></xml>")


class WeComSender:
    """Posts callbacks to our endpoint exactly as WeCom does, and opens the passive replies."""

    def __init__(self, base_url: str, token: str = TOKEN, aes_key: str = AES_KEY, corp_id: str = CORP_ID) -> None:
        self.url = base_url + "/wechat/wecom"
        self.token, self.corp_id = token, corp_id
        self.key = base64.b64decode(aes_key + "=")
        self.crypto = WeChatCrypto(token, aes_key, corp_id)

    def encrypt(self, inner: str, corp_id: str | None = None) -> str:
        return PrpCrypto(self.key).encrypt(inner, corp_id or self.corp_id).decode()

    def envelope(self, encrypt: str, timestamp: str | None = None, nonce: str | None = None,
                 forged: bool = False) -> tuple[dict[str, str], bytes]:
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or uuid.uuid4().hex[:10]
        sig = signature(self.token, timestamp, nonce, encrypt)
        if forged:
            sig = signature("not-the-token", timestamp, nonce, encrypt)
        body = (f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
                f"<AgentID><![CDATA[{AGENT_ID}]]></AgentID></xml>")
        return {"msg_signature": sig, "timestamp": timestamp, "nonce": nonce}, body.encode()

    def post(self, inner: str, forged: bool = False) -> requests.Response:
        params, body = self.envelope(self.encrypt(inner), forged=forged)
        return self.post_raw(params, body)

    def post_raw(self, params: dict[str, str], body: bytes) -> requests.Response:
        return requests.post(self.url, params=params, data=body, timeout=10,
                             headers={"Content-Type": "text/xml"})

    def signed_raw(self, body: bytes, encrypt_for_signature: str = "") -> requests.Response:
        """A body of our choosing, with a signature that is valid for `encrypt_for_signature`."""
        params, _ = self.envelope(encrypt_for_signature)
        return self.post_raw(params, body)

    def reply(self, resp: requests.Response) -> dict[str, str] | None:
        """The decrypted passive reply (its signature checked), or None for an empty answer."""
        assert resp.status_code == 200, (resp.status_code, resp.text)
        if not resp.content:
            return None
        assert resp.headers["Content-Type"].startswith("application/xml")
        outer = xmltodict.parse(resp.text)["xml"]
        inner = self.crypto.decrypt_message(resp.text, outer["MsgSignature"], outer["TimeStamp"], outer["Nonce"])
        return xmltodict.parse(inner)["xml"]

    def reply_text(self, resp: requests.Response) -> str:
        fields = self.reply(resp)
        return "" if fields is None else fields["Content"]


# ── our side: the real app over real HTTP ────────────────────────────────────

def wecom_settings(db_url: str, redis_url: str | None, **overrides: str) -> Settings:
    values = dict(database_url=db_url, redis_url=redis_url, secret_key="test", wecom_corp_id=CORP_ID,
                  wecom_agent_id=AGENT_ID, wecom_secret="secret", wecom_token=TOKEN, wecom_aes_key=AES_KEY)
    values.update(overrides)
    return load_settings(values)


@contextmanager
def live_server(settings: Settings, today: date) -> Iterator[str]:
    tz = ZoneInfo(settings.timezone)
    service = make_service(settings, clock=lambda: datetime.combine(today, clock_time(10, 0), tz))
    server = make_server("127.0.0.1", 0, create_app(service=service), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
        service.engine.dispose()


@pytest.fixture
def serve(db_url, today, redis_url):
    """Start the app on a free loopback port; returns a WeComSender pointed at it."""
    with ExitStack() as stack:
        def start(redis: str | None = redis_url, **overrides: str) -> WeComSender:
            settings = wecom_settings(db_url, redis, **overrides)
            base = stack.enter_context(live_server(settings, today))
            return WeComSender(base, settings.wecom_token, settings.wecom_aes_key, settings.wecom_corp_id)

        yield start


def count(session, model) -> int:
    session.expire_all()
    session.rollback()
    return session.scalar(select(func.count()).select_from(model))


# ── URL verification ─────────────────────────────────────────────────────────

def test_published_sample_url_verification(serve):
    wecom = serve(wecom_token=SAMPLE["token"], wecom_aes_key=SAMPLE["aes_key"], wecom_corp_id=SAMPLE["corp_id"])
    params = {k: SAMPLE[k] for k in ("msg_signature", "timestamp", "nonce", "echostr")}
    started = time.monotonic()
    resp = requests.get(wecom.url, params=params, timeout=5)
    assert time.monotonic() - started < 1.0
    assert resp.status_code == 200
    assert resp.text == SAMPLE["plain"]
    assert resp.headers["Content-Type"].startswith("text/plain")

    # A "+" left unescaped in the query (read as a space) still verifies.
    raw = "&".join(f"{k}={v}" for k, v in params.items())
    assert requests.get(f"{wecom.url}?{raw}", timeout=5).text == SAMPLE["plain"]

    forged = requests.get(wecom.url, params=dict(params, msg_signature="0" * 40), timeout=5)
    assert forged.status_code == 403
    missing = requests.get(wecom.url, params={k: v for k, v in params.items() if k != "echostr"}, timeout=5)
    assert missing.status_code == 400


def test_signatures_are_checked_by_us_against_the_published_sample():
    from bot.channels.wecom import signature_matches

    args = (SAMPLE["token"], SAMPLE["msg_signature"], SAMPLE["timestamp"], SAMPLE["nonce"], SAMPLE["echostr"])
    assert signature_matches(*args)
    for forged in ("", SAMPLE["msg_signature"].upper(), SAMPLE["msg_signature"][:-1],
                   SAMPLE["msg_signature"] + "0", "签名" * 20):
        assert not signature_matches(args[0], forged, *args[2:]), forged


def test_url_verification_with_undecodable_echostr_is_400(serve):
    wecom = serve()
    for echostr in ("not base64 at all!", "QUJD", base64.b64encode(bytes(48)).decode()):
        params = {"timestamp": "1409659589", "nonce": "263014780", "echostr": echostr,
                  "msg_signature": signature(TOKEN, "1409659589", "263014780", echostr)}
        assert requests.get(wecom.url, params=params, timeout=5).status_code == 400, echostr


# ── messages ─────────────────────────────────────────────────────────────────

def test_forged_signature_is_403_and_writes_nothing(serve, college, session):
    wecom = serve()
    resp = wecom.post(text_xml("wangfang", "全勤率 张三 95 李四 90"), forged=True)
    assert resp.status_code == 403
    assert count(session, ScoreEntry) == 0
    assert count(session, ProcessedMessage) == 0


def test_forged_signatures_of_every_shape_are_403(serve, college, session):
    """Wrong, truncated, too long, upper-case, non-ASCII: each is refused before anything is decrypted."""
    wecom = serve()
    params, body = wecom.envelope(wecom.encrypt(text_xml("wangfang", "全勤率 张三 95")))
    good = params["msg_signature"]
    for forged in (good[:-1] + ("0" if good[-1] != "0" else "1"), good[:-1], good + "0", good.upper(),
                   "签" * 40, "0" * 40):
        assert forged != good
        resp = wecom.post_raw(dict(params, msg_signature=forged), body)
        assert resp.status_code == 403, (forged, resp.status_code)
    assert count(session, ScoreEntry) == 0 and count(session, ProcessedMessage) == 0
    assert "已记录 1 条" in wecom.reply_text(wecom.post_raw(params, body))


def test_teacher_records_two_students_and_reads_the_encrypted_reply(serve, college, session):
    wecom = serve()
    resp = wecom.post(text_xml("wangfang", "全勤率 张三 95 李四 90"))
    reply = wecom.reply(resp)
    assert reply is not None
    assert reply["ToUserName"] == "wangfang"
    assert reply["FromUserName"] == CORP_ID
    assert reply["MsgType"] == "text"
    assert abs(int(reply["CreateTime"]) - time.time()) < 60
    assert "已记录 2 条" in reply["Content"], reply["Content"]
    assert count(session, ScoreEntry) == 2


def test_callback_with_a_2014_timestamp_is_accepted(serve, college, session):
    wecom = serve()
    params, body = wecom.envelope(wecom.encrypt(text_xml("wangfang", "全勤率 张三 95")), timestamp="1409659589")
    assert "已记录 1 条" in wecom.reply_text(wecom.post_raw(params, body))


def _post_same_message_four_times(wecom: WeComSender) -> list[str]:
    params, body = wecom.envelope(wecom.encrypt(text_xml("wangfang", "全勤率 张三 95 李四 90")))
    return [wecom.reply_text(wecom.post_raw(params, body)) for _ in range(4)]


def _assert_one_recording(replies: list[str], session) -> None:
    texts = {r for r in replies if r}
    assert len(texts) == 1, replies
    assert "已记录 2 条" in texts.pop()
    assert count(session, ScoreEntry) == 2
    assert count(session, ProcessedMessage) == 1


def test_the_same_message_four_times_is_recorded_once(serve, college, session):
    _assert_one_recording(_post_same_message_four_times(serve()), session)


def test_the_same_message_four_times_with_redis_down_is_recorded_once(serve, college, session):
    _assert_one_recording(_post_same_message_four_times(serve(redis=REDIS_DOWN)), session)


@pytest.mark.parametrize("redis_down", [False, True], ids=["dedupe", "redis-down"])
def test_concurrent_duplicates_are_recorded_once(serve, college, session, redis_down):
    wecom = serve(redis=REDIS_DOWN) if redis_down else serve()
    params, body = wecom.envelope(wecom.encrypt(text_xml("wangfang", "全勤率 张三 95 李四 90")))
    results = at_once([lambda: wecom.post_raw(params, body)] * 4)
    assert [r.status_code for r in results] == [200] * 4
    _assert_one_recording([wecom.reply_text(r) for r in results], session)


def test_image_message_gets_a_polite_reply(serve, college, session):
    wecom = serve()
    text = wecom.reply_text(wecom.post(image_xml("wangfang")))
    assert "文字" in text
    assert count(session, ScoreEntry) == 0


def test_welcome_on_entering_the_app_once_and_nothing_for_other_events(serve, college):
    wecom = serve()
    params, body = wecom.envelope(wecom.encrypt(event_xml("wangfang", "enter_agent")))
    first = wecom.reply_text(wecom.post_raw(params, body))
    assert "欢迎使用储值卡助手" in first
    assert wecom.reply_text(wecom.post_raw(params, body)) == ""  # WeCom's retry of the same event
    assert "欢迎" in wecom.reply_text(wecom.post(event_xml("zhangsan", "subscribe")))
    for event in ("LOCATION", "click", "view", "change_contact", "some_future_event"):
        resp = wecom.post(event_xml("wangfang", event))
        assert resp.status_code == 200 and resp.content == b"", event


def test_a_menu_click_is_its_command_answered_once(serve, college, session):
    """A student clicks the 储值卡 menu: their card, as if they had typed it; WeCom's retry of the
    same click (same sender and CreateTime) gets the same reply and is handled once."""
    wecom = serve()
    created = int(time.time())
    params, body = wecom.envelope(wecom.encrypt(event_xml("zhangsan", "click", created, key="储值卡")))
    first = wecom.reply_text(wecom.post_raw(params, body))
    assert "张三（计算机2301）储值卡" in first, first
    assert wecom.reply_text(wecom.post_raw(params, body)) == first
    session.rollback()
    assert list(session.scalars(select(ProcessedMessage.msg_key))) == [f"wecom:zhangsan:{created}:click"]
    # Another click is another second: events are keyed by sender and CreateTime (PRODUCT.md §4).
    help_text = wecom.reply_text(wecom.post(event_xml("zhangsan", "click", created + 1, key="帮助")))
    assert "储值卡" in help_text and help_text != first


def test_view_events_are_an_empty_200(serve, college, session):
    wecom = serve()
    resp = wecom.post(event_xml("zhangsan", "view", key="http://localhost:8000/h5/card"))
    assert resp.status_code == 200 and resp.content == b""
    assert count(session, ProcessedMessage) == 0


def test_unknown_sender_is_told_how_to_get_bound(serve, college, session):
    wecom = serve()
    text = wecom.reply_text(wecom.post(text_xml("stranger01", "储值卡")))
    assert "stranger01" in text and "绑定" in text and "名册" in text
    assert count(session, ScoreEntry) == 0


# ── the production server: gunicorn with gunicorn.conf.py ───────────────────

@contextmanager
def production_server(db_url: str, redis_url: str | None, logdir: Path) -> Iterator[tuple[str, Path]]:
    """`gunicorn 'bot:create_app()'` from the repository root, as the Dockerfile runs it (its
    gunicorn.conf.py: gevent), with two workers; yields the base URL and the log."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WECOM_", "MP_", "REDIS_", "DATABASE_"))}
    env.update(DATABASE_URL=db_url, SECRET_KEY="test", APP_ENV="production", WECOM_CORP_ID=CORP_ID,
               WECOM_AGENT_ID=AGENT_ID, WECOM_SECRET="secret", WECOM_TOKEN=TOKEN, WECOM_AES_KEY=AES_KEY,
               WECOM_API_BASE="http://127.0.0.1:1/cgi-bin/")
    if redis_url:
        env["REDIS_URL"] = redis_url
    log_path = logdir / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{port}",
                                 "bot:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if requests.get(base + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # refused, or a worker still booting on a loaded machine
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield base, log_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_production_server_records_concurrent_messages_once_each(db_url, redis_url, college, session,
                                                                     tmp_path):
    """24 recordings at once (eight successive values for each of three students) and a message
    WeChat delivers four times, over two gevent workers: every reply says it was recorded, each
    message is recorded once, and each student's replacements form one unbroken audit chain."""
    with production_server(db_url, redis_url, tmp_path) as (base, log_path):
        wecom = WeComSender(base)
        names = ["张三", "李四", "王五"]
        jobs = [wecom.envelope(wecom.encrypt(text_xml("wangfang", f"全勤率 {names[n % 3]} {70 + n}")))
                for n in range(24)]
        retried = wecom.envelope(wecom.encrypt(text_xml("wangfang", "全勤率 2023010104 95")))
        jobs[5:5] = [retried] * 2
        jobs[17:17] = [retried] * 2
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda job: wecom.post_raw(*job), jobs))
        texts = [wecom.reply_text(r) for r in replies]
        assert "Using worker: gevent" in log_path.read_text()

    assert all("已记录 1 条" in t for t in texts), texts
    assert len({t for (_, body), t in zip(jobs, texts, strict=True) if body == retried[1]}) == 1
    assert count(session, ProcessedMessage) == 25
    entries = list(session.scalars(select(ScoreEntry)))
    assert len(entries) == 25 and len({e.source_msg for e in entries}) == 25
    by_subject: dict[str, list[AuditLog]] = {}
    for audit in session.scalars(select(AuditLog).where(AuditLog.action == "record").order_by(AuditLog.id)):
        by_subject.setdefault(audit.entity_key, []).append(audit)
    chains = sorted(len(audits) for audits in by_subject.values())
    assert chains == [1, 8, 8, 8]
    values = {e.id: e.value for e in entries}
    for audits in by_subject.values():
        assert audits[0].old_value is None
        for before, audit in zip(audits, audits[1:], strict=False):
            assert json.loads(audit.old_value) == json.loads(before.new_value)
        chain = [json.loads(a.new_value) for a in audits]
        assert [c["entry"] for c in chain] == sorted(c["entry"] for c in chain)  # the newest replaces last
        assert all(values[c["entry"]] == c["value"] for c in chain)


# ── hostile and malformed input: 4xx, never 500 ──────────────────────────────

BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    + ']><xml><ToUserName>x</ToUserName><Encrypt>&lol9;</Encrypt></xml>'
)
EXTERNAL_ENTITY = '<?xml version="1.0"?><!doctype xml [<!entity xxe SYSTEM "file:///etc/passwd">]><xml><Encrypt>&xxe;</Encrypt></xml>'


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_dtd_and_entities_are_refused(serve, college, session, body):
    wecom = serve()
    resp = wecom.signed_raw(body.encode(), "&lol9;")
    assert 400 <= resp.status_code < 500
    assert count(session, ProcessedMessage) == 0


def test_dtd_inside_the_encrypted_message_is_refused(serve, college, session):
    wecom = serve()
    inner = '<!DOCTYPE xml [<!ENTITY a "全勤率 张三 95">]>' + text_xml("wangfang", "&a;")
    assert wecom.post(inner).status_code == 400
    assert count(session, ScoreEntry) == 0


def _cdata_xml(sender: str, content: str) -> str:
    """A text message as WeCom writes it: a `]]>` in the content splits its CDATA in two."""
    return text_xml(sender, content.replace("]]>", "]]]]><![CDATA[>"))


@pytest.mark.parametrize("content", [
    "<!DOCTYPE html>",
    '全勤率 张三 95 <!ENTITY lol "lol">',
    '<!DOCTYPE xml [<!ENTITY a "]]>">]>&a;',
    "<!-- 注释 --> &amp; &lol9; ]]> <![CDATA[ x ]]>",
], ids=["doctype", "entity-after-a-recording", "dtd-with-cdata-end", "comment-and-entities"])
def test_markup_typed_as_text_is_a_message_like_any_other(serve, college, session, content):
    """WeCom puts what the sender typed in CDATA: a text that says "<!DOCTYPE" is answered, not refused."""
    wecom = serve()
    resp = wecom.post(_cdata_xml("wangfang", content))
    assert resp.status_code == 200
    text = wecom.reply_text(resp)
    assert text and "出错" not in text
    if content.startswith("全勤率"):
        assert "没有记录任何内容" in text and count(session, ScoreEntry) == 0
    else:
        assert "没看懂" in text
    assert count(session, ProcessedMessage) == 1


def test_control_characters_typed_as_text_are_answered(serve, college, session):
    """Characters XML forbids even in CDATA (NUL, ESC, …) do not cost the sender their reply."""
    wecom = serve()
    text = wecom.reply_text(wecom.post(_cdata_xml("wangfang", "全勤率 张三 95\x00\x1b]]]]\x1b>")))
    assert "没有记录任何内容" in text  # the line with the stray characters is named, nothing recorded
    assert "已记录 1 条" in wecom.reply_text(wecom.post(_cdata_xml("wangfang", "全勤率 张三 95\n\x07")))
    assert count(session, ScoreEntry) == 1


def test_a_dtd_hidden_after_a_comment_is_still_refused(serve, college, session):
    wecom = serve()
    inner = '<!-- a comment --><!DOCTYPE xml [<!ENTITY a "全勤率 张三 95">]>' + text_xml("wangfang", "&a;")
    assert wecom.post(inner).status_code == 400
    assert count(session, ScoreEntry) == 0 and count(session, ProcessedMessage) == 0


def _garbage_cases(wecom: WeComSender) -> dict[str, tuple[dict[str, str], bytes]]:
    def signed(encrypt: str) -> tuple[dict[str, str], bytes]:
        return wecom.envelope(encrypt)

    params, _ = wecom.envelope("x")
    other_corp = wecom.encrypt(text_xml("wangfang", "全勤率 张三 95"), corp_id="wwsomeoneelse")
    return {
        "malformed-xml": (params, b"<xml><Encrypt>abc</Encrypt"),
        "not-xml": (params, b"hello"),
        "wrong-root": (params, b"<foo><Encrypt>abc</Encrypt></foo>"),
        "nested-encrypt": (params, b"<xml><Encrypt><a>1</a></Encrypt></xml>"),
        "no-encrypt": (params, b"<xml><ToUserName>x</ToUserName></xml>"),
        "empty-body": (params, b""),
        "not-utf8": (params, "<xml><Encrypt>加密</Encrypt></xml>".encode("gbk")),
        "garbage-base64": signed("!!!not base64!!!"),
        "short-ciphertext": signed("QUJD"),
        "zero-blocks": signed(base64.b64encode(bytes(64)).decode()),
        "random-blocks": signed(base64.b64encode(hashlib.sha512(b"x").digest()).decode()),
        "empty-plaintext": signed(wecom.encrypt("")),
        "plaintext-not-xml": signed(wecom.encrypt("hello")),
        "inner-without-sender": signed(wecom.encrypt("<xml><MsgType>text</MsgType></xml>")),
        "other-corp": signed(other_corp),
        "missing-query": ({}, b"<xml><Encrypt>abc</Encrypt></xml>"),
    }


def test_malformed_input_is_4xx_never_500(serve, college, session):
    wecom = serve()
    for name, (params, body) in _garbage_cases(wecom).items():
        resp = wecom.post_raw(params, body)
        assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text[:200])
    assert count(session, ScoreEntry) == 0
    assert count(session, ProcessedMessage) == 0


def test_oversize_body_is_413(serve, college, session):
    wecom = serve()
    params, _ = wecom.envelope("x")
    body = b"<xml><Encrypt>" + b"A" * (70 * 1024) + b"</Encrypt></xml>"
    resp = wecom.post_raw(params, body)
    assert resp.status_code == 413
    assert count(session, ProcessedMessage) == 0


# ── the WeCom API client against the fake WeCom ──────────────────────────────

def api_settings(fake: FakeWeCom, secret: str | None = None) -> Settings:
    return load_settings({"database_url": "sqlite://", "redis_url": None, "secret_key": "test",
                          "wecom_corp_id": fake.corp_id, "wecom_secret": secret or fake.secret,
                          "wecom_agent_id": str(fake.agent_id), "wecom_token": TOKEN, "wecom_aes_key": AES_KEY,
                          "wecom_api_base": fake.base_url})


@pytest.fixture
def fake():
    # A fresh corp id per test: token caches (Redis or this process) never leak between tests.
    with FakeWeCom(corp_id=f"ww{uuid.uuid4().hex[:16]}") as server:
        yield server


def test_every_call_goes_to_the_configured_base_with_a_timeout(fake, token_store):
    api = WeComAPI(api_settings(fake), token_store)
    assert api.client.timeout == 5.0 and api.client.auto_retry is False
    result = api.send_text(["wangfang", "lisi"], "你好，今晚 8 点前请补录全勤率。")
    assert result["errcode"] == 0
    assert [c.path for c in fake.calls] == ["gettoken", "message/send"]
    assert fake.calls[0].params == {"corpid": fake.corp_id, "corpsecret": fake.secret}
    body = fake.calls[1].body
    assert body["agentid"] == fake.agent_id and body["touser"] == "wangfang|lisi" and body["msgtype"] == "text"
    assert fake.received["lisi"] == ["你好，今晚 8 点前请补录全勤率。"]


def test_the_token_is_shared_and_its_expiry_is_shared_too(fake, token_store):
    first = WeComAPI(api_settings(fake), token_store)
    token = first.access_token()
    second = WeComAPI(api_settings(fake), token_store)
    assert second.access_token() == token
    second.send_text(["wangfang"], "一")
    assert fake.calls_to("gettoken") == 1
    # A third client whose clock reads almost two hours later sees the stored expiry and refreshes.
    later = WeComAPI(api_settings(fake), token_store, clock=lambda: time.time() + 7000)
    assert later.access_token() != token
    assert fake.calls_to("gettoken") == 2


def test_expiry_and_token_live_in_redis(fake, redis_url):
    if not redis_url:
        pytest.skip("TEST_REDIS_URL is not set")
    client = redis.Redis.from_url(redis_url)
    api = WeComAPI(api_settings(fake), client)
    token = api.access_token()
    [key] = list(client.scan_iter(f"czk:wecom:token:*{api._token_key[-16:]}"))
    stored = json.loads(client.get(key))
    assert stored["token"] == token
    assert abs(stored["expires_at"] - (time.time() + 7200)) < 30
    assert 7000 < client.ttl(key) <= 7200
    client.close()


def test_concurrent_refresh_calls_gettoken_once(fake, token_store):
    clients = [WeComAPI(api_settings(fake), token_store) for _ in range(3)]  # as if three processes
    fake.fail_next(1, delay=0.3, path="gettoken")  # a slow gettoken widens the race
    tokens = at_once([clients[i % 3].access_token for i in range(9)], timeout=20)
    assert len(tokens) == 9 and len(set(tokens)) == 1
    assert fake.calls_to("gettoken") == 1


@pytest.mark.parametrize("how", ["expired", "injected-42001", "revoked-40014"])
def test_a_refused_token_is_refreshed_once_and_the_message_sent(fake, token_store, how):
    api = WeComAPI(api_settings(fake), token_store)
    api.send_text(["wangfang"], "一")
    if how == "expired":
        fake.expire_tokens()
    elif how == "revoked-40014":
        fake.revoke_tokens()
    else:
        fake.fail_next(1, errcode=42001, path="message/send")
    assert api.send_text(["wangfang"], "二")["errcode"] == 0
    assert fake.calls_to("gettoken") == 2
    assert fake.calls_to("message/send") == 3
    assert fake.received["wangfang"] == ["一", "二"]


def test_a_token_refused_twice_is_raised_not_retried_forever(fake, token_store):
    api = WeComAPI(api_settings(fake), token_store)
    fake.fail_next(5, errcode=40014, path="message/send")
    with pytest.raises(WeComAPIError) as caught:
        api.send_text(["wangfang"], "一")
    assert caught.value.errcode == 40014 and caught.value.token_error
    assert fake.calls_to("message/send") == 2 and fake.calls_to("gettoken") == 2


def test_errors_are_typed(fake):
    api = WeComAPI(api_settings(fake), None, timeout=0.5)
    fake.fail_next(1, errcode=45009, path="message/send")
    with pytest.raises(WeComAPIError) as caught:
        api.send_text(["wangfang"], "一")
    assert caught.value.errcode == 45009 and caught.value.retryable

    fake.fail_next(1, http_status=500, path="message/send")
    with pytest.raises(WeComAPIError) as caught:
        api.send_text(["wangfang"], "一")
    assert caught.value.errcode is None and caught.value.http_status == 500 and caught.value.retryable

    fake.fail_next(1, delay=1.5, path="message/send")
    started = time.monotonic()
    with pytest.raises(WeComAPIError) as caught:
        api.send_text(["wangfang"], "一")
    assert caught.value.errcode is None and time.monotonic() - started < 1.4

    fake.fail_next(1, errcode=48002, path="message/send")
    with pytest.raises(WeComAPIError) as caught:
        api.send_text(["wangfang"], "一")
    assert not caught.value.retryable
    assert fake.received["wangfang"] == []


def test_bad_credentials_are_errcodes(fake):
    with pytest.raises(WeComAPIError) as caught:
        WeComAPI(api_settings(fake, secret="wrong"), None).access_token()
    assert caught.value.errcode == 40001
    other = load_settings({"database_url": "sqlite://", "secret_key": "t", "wecom_corp_id": "wwnobody",
                           "wecom_secret": fake.secret, "wecom_api_base": fake.base_url})
    with pytest.raises(WeComAPIError) as caught:
        WeComAPI(other, None).access_token()
    assert caught.value.errcode == 40013


def test_redis_down_falls_back_to_this_process(fake):
    down = redis.Redis.from_url(REDIS_DOWN, socket_connect_timeout=0.2, socket_timeout=0.2)
    api = WeComAPI(api_settings(fake), down)
    assert api.send_text(["wangfang"], "一")["errcode"] == 0
    assert WeComAPI(api_settings(fake), down).access_token() == api.access_token()
    assert fake.calls_to("gettoken") == 1


def test_send_text_refuses_what_wecom_would_refuse(fake):
    api = WeComAPI(api_settings(fake), None)
    with pytest.raises(ValueError):
        api.send_text([f"u{i}" for i in range(1001)], "一")
    with pytest.raises(ValueError):
        api.send_text(["wangfang"], "字" * 683)  # 2049 bytes
    with pytest.raises(ValueError):
        api.send_text([], "一")
    assert fake.calls == []


def test_the_fake_enforces_wecom_limits(fake):
    base = fake.base_url
    token = requests.get(base + "gettoken", params={"corpid": fake.corp_id, "corpsecret": fake.secret},
                         timeout=5).json()["access_token"]

    def send(body: dict, access_token: str = token) -> int:
        return requests.post(base + "message/send", params={"access_token": access_token}, json=body,
                             timeout=5).json()["errcode"]

    text = {"msgtype": "text", "agentid": fake.agent_id, "touser": "a", "text": {"content": "一"}}
    assert send(text) == 0
    assert send(text, "bogus") == 40014
    assert send(dict(text, touser="|".join(f"u{i}" for i in range(1001)))) == 40003
    assert send(dict(text, text={"content": "字" * 683})) == 45002
    assert send(dict(text, agentid=1)) == 40056
    assert send({"msgtype": "textcard", "agentid": fake.agent_id, "touser": "a",
                 "textcard": {"title": "标" * 43, "description": "d", "url": "http://x"}}) == 45002
    for _ in range(35):
        send(dict(text, touser="busy"))
    assert len(fake.received["busy"]) == 30 and len(fake.dropped["busy"]) == 5


def test_unknown_path_is_404(fake):
    assert requests.get(fake.base_url + "nothing", timeout=5).status_code == 404

"""The Official Account edge over real HTTP: /wechat/mp in plaintext, compatible and safe mode,
with requests signed and encrypted as WeChat signs and encrypts them (wechatpy's WeChatCrypto is
WeChat's side of the wire), and WeChat's own published sample accepted as it stands."""

from __future__ import annotations

import time
from contextlib import ExitStack

import pytest
import requests
import xmltodict
from sqlalchemy import select
from wechatpy.crypto import PrpCrypto, WeChatCrypto

from core.config import Settings, load_settings
from core.render import render
from models.schema import MpFollower, ProcessedMessage
from tests.edges.test_wecom import BILLION_LAUGHS, EXTERNAL_ENTITY, count, live_server
from tests.fakes.threads import at_once
from tests.fakes.wechat_mp import (
    ACCOUNT,
    AES_KEY,
    APP_ID,
    OPENID,
    TOKEN,
    MpSender,
    event_msg,
    fields_xml,
    image_msg,
    signature,
    text_msg,
)

# WeChat's published sample of Official Account message encryption: the demo of the WXBizMsgCrypt
# sample code (Sample.py, "WXBizMsgCrypt 使用demo文件", jonyqin, 2014) that WeChat ships with its
# message encryption documentation, reproduced verbatim e.g. in charlesXu86/Chatbot_CN
# Chatbot_Web/impl/weixin/Sample.py. The sample has the body (`from_xml`, compatible mode: the plain
# fields and their Encrypt), `msg_sign`, `timestamp` and `nonce`. `signature` is the plaintext-mode
# signature WeChat sends beside them, sha1 of the sorted token, timestamp and nonce. PLAIN is what
# the Encrypt decrypts to.
SAMPLE = dict(
    token="spamtest", aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", app_id="wx2c2769f8efd9abc2",
    timestamp="1409735669", nonce="1320562132", msg_signature="5d197aaffba7e9b25a30732f161a50dee96bd5fa",
    signature="16120ec1b8dbb870f510d87ce6bc2463eae6ca1a",
    body=("<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>"
          "<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>"
          "<CreateTime>1409735668</CreateTime><MsgType><![CDATA[text]]></MsgType>"
          "<Content><![CDATA[abcdteT]]></Content><MsgId>6054768590064713728</MsgId>"
          "<Encrypt><![CDATA[hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmB"
          "M4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDY"
          "sVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77"
          "TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehV"
          "sNPfUM669WuMyVWQLCzpu9GhglF2PE=]]></Encrypt></xml>"),
    plain=("<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n"
           "<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n"
           "<CreateTime>1409735668</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n"
           "<Content><![CDATA[abcdteT]]></Content>\n<MsgId>6054768590064713728</MsgId>\n</xml>"),
)


# ── our side ─────────────────────────────────────────────────────────────────

def mp_settings(db_url: str, redis_url: str | None, **overrides: str | None) -> Settings:
    values: dict[str, str | None] = dict(database_url=db_url, redis_url=redis_url, secret_key="test",
                                         mp_app_id=APP_ID, mp_app_secret="secret", mp_token=TOKEN,
                                         mp_aes_key=AES_KEY)
    values.update(overrides)
    return load_settings(values)


@pytest.fixture
def serve(db_url, today, redis_url, clean_db):
    """Start the app on a free loopback port (an empty database); returns an MpSender pointed at it."""
    with ExitStack() as stack:
        def start(**overrides: str | None) -> MpSender:
            settings = mp_settings(db_url, redis_url, **overrides)
            base = stack.enter_context(live_server(settings, today))
            return MpSender(base, settings.mp_token or "", settings.mp_aes_key, settings.mp_app_id or "")

        yield start


def follower(session, openid: str = OPENID) -> MpFollower | None:
    session.expire_all()
    session.rollback()
    return session.scalar(select(MpFollower).where(MpFollower.openid == openid))


def processed_keys(session) -> list[str]:
    session.expire_all()
    session.rollback()
    return list(session.scalars(select(ProcessedMessage.msg_key).order_by(ProcessedMessage.msg_key)))


# ── URL verification ─────────────────────────────────────────────────────────

def test_url_verification_answers_the_echostr_as_is(serve):
    mp = serve()
    timestamp, nonce, echostr = "1409735669", "1320562132", "7421384520019284395"
    params = {"signature": signature(TOKEN, timestamp, nonce), "timestamp": timestamp, "nonce": nonce,
              "echostr": echostr}
    started = time.monotonic()
    resp = requests.get(mp.url, params=params, timeout=5)
    assert time.monotonic() - started < 1.0
    assert resp.status_code == 200 and resp.text == echostr
    assert resp.headers["Content-Type"].startswith("text/plain")

    good = params["signature"]
    for forged in ("0" * 40, good.upper(), good[:-1], good + "0", signature("other", timestamp, nonce), "签" * 20):
        assert requests.get(mp.url, params=dict(params, signature=forged), timeout=5).status_code == 403, forged
    for missing in params:
        partial = {k: v for k, v in params.items() if k != missing}
        assert requests.get(mp.url, params=partial, timeout=5).status_code == 400, missing


def test_the_channel_is_off_without_mp_token(serve):
    mp = serve(mp_token=None)
    params, body = MpSender("", TOKEN).plain_request(text_msg("帮助"))
    assert mp.post(params, body).status_code == 404
    assert requests.get(mp.url, params=dict(params, echostr="1"), timeout=5).status_code == 404


def test_a_malformed_mp_aes_key_stops_the_app_at_start(db_url, redis_url):
    from bot import create_app

    with pytest.raises(RuntimeError, match="MP_AES_KEY"):
        create_app(mp_settings(db_url, redis_url, mp_aes_key="not-a-key"))


# ── the three modes ──────────────────────────────────────────────────────────

def test_plaintext_mode_round_trip(serve, session):
    mp = serve(mp_aes_key=None)
    reply = mp.reply(mp.plain(text_msg("帮助")), encrypted=False)
    assert reply is not None
    assert reply["ToUserName"] == OPENID and reply["FromUserName"] == ACCOUNT and reply["MsgType"] == "text"
    assert abs(int(reply["CreateTime"]) - time.time()) < 60
    assert reply["Content"] and "出错" not in reply["Content"]
    assert len(processed_keys(session)) == 1


def test_safe_mode_round_trip_is_answered_encrypted(serve, session):
    mp = serve()
    reply = mp.reply(mp.safe(text_msg("帮助")), encrypted=True)
    assert reply is not None
    assert reply["ToUserName"] == OPENID and reply["FromUserName"] == ACCOUNT and reply["MsgType"] == "text"
    assert reply["Content"] and "出错" not in reply["Content"]
    assert len(processed_keys(session)) == 1


def test_compatible_mode_reads_the_encrypted_copy(serve, session):
    """The body carries the plain fields and their Encrypt: with encrypt_type=aes the authenticated
    (encrypted) copy is the one read, and the reply is encrypted; without it, the plain fields."""
    mp = serve()
    fields = text_msg("帮助")
    params, body = mp.aes_request(fields, compatible=True, inner=fields_xml(dict(fields, FromUserName="oInner")))
    reply = mp.reply(mp.post(params, body), encrypted=True)
    assert reply is not None and reply["ToUserName"] == "oInner"

    plain_params, plain_body = mp.plain_request(text_msg("帮助"))
    reply = mp.reply(mp.post(plain_params, plain_body), encrypted=False)
    assert reply is not None and reply["ToUserName"] == OPENID
    assert len(processed_keys(session)) == 2


def test_wechats_published_sample_is_accepted(serve, session):
    """The sample request exactly as published (2014 timestamp and all): decrypted and answered, once."""
    assert PrpCrypto(WeChatCrypto(SAMPLE["token"], SAMPLE["aes_key"], SAMPLE["app_id"]).key).decrypt(
        xmltodict.parse(SAMPLE["body"])["xml"]["Encrypt"], SAMPLE["app_id"]) == SAMPLE["plain"]
    mp = serve(mp_token=SAMPLE["token"], mp_aes_key=SAMPLE["aes_key"], mp_app_id=SAMPLE["app_id"])
    params = {k: SAMPLE[k] for k in ("signature", "timestamp", "nonce", "msg_signature")}
    params["encrypt_type"] = "aes"
    body = SAMPLE["body"].encode()

    first = mp.reply(mp.post(params, body), encrypted=True)
    assert first is not None
    assert first["ToUserName"] == "oyORnuP8q7ou2gfYjqLzSIWZf0rs" and first["FromUserName"] == "gh_10f6c3c3ac5a"
    assert first["Content"] and "出错" not in first["Content"]
    # WeChat's retry, and the same message read in plaintext mode: the MsgId is handled once.
    assert mp.reply(mp.post(params, body), encrypted=True)["Content"] == first["Content"]
    plain = {k: SAMPLE[k] for k in ("signature", "timestamp", "nonce")}
    assert mp.reply(mp.post(plain, body), encrypted=False)["Content"] == first["Content"]
    assert processed_keys(session) == ["mp:6054768590064713728"]
    assert follower(session, "oyORnuP8q7ou2gfYjqLzSIWZf0rs").last_message_at is not None

    forged = dict(params, msg_signature="5d197aaffba7e9b25a30732f161a50dee96bd5fb")
    assert mp.post(forged, body).status_code == 403


def test_encrypted_callback_without_mp_aes_key(serve, session):
    """400, not 403, for WeChat's authentic request (the fault is our setup); 403 for a forged one."""
    mp = serve(mp_aes_key=None)
    mp.crypto = WeChatCrypto(TOKEN, AES_KEY, APP_ID)
    assert mp.safe(text_msg("帮助")).status_code == 400
    assert mp.safe(text_msg("帮助"), forged=True).status_code == 403
    assert processed_keys(session) == [] and follower(session) is None


# ── bad input: 403 or 400, nothing written ───────────────────────────────────

def test_forged_signatures_are_403_and_write_nothing(serve, session):
    mp = serve()
    assert mp.plain(text_msg("帮助"), forged=True).status_code == 403
    assert mp.safe(text_msg("帮助"), forged=True).status_code == 403
    assert mp.safe(text_msg("帮助"), compatible=True, forged=True).status_code == 403
    params, body = mp.aes_request(text_msg("帮助"))
    assert mp.post(dict(params, msg_signature=params["signature"]), body).status_code == 403
    assert processed_keys(session) == [] and follower(session) is None


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_dtd_and_entities_are_refused_fast(serve, session, body):
    mp = serve()
    timestamp, nonce = mp.stamp()
    plain = {"signature": signature(TOKEN, timestamp, nonce), "timestamp": timestamp, "nonce": nonce}
    safe = dict(plain, encrypt_type="aes", msg_signature=signature(TOKEN, timestamp, nonce, "&lol9;"))
    for params in (plain, safe):
        started = time.monotonic()
        resp = mp.post(params, body.encode())
        assert resp.status_code == 400 and time.monotonic() - started < 1.0
    inner = '<!DOCTYPE xml [<!ENTITY a "帮助">]>' + fields_xml(text_msg("&a;"))
    assert mp.post(*mp.aes_request({}, inner=inner)).status_code == 400
    assert processed_keys(session) == []


def test_malformed_input_is_4xx_never_500(serve, session):
    mp = serve()
    params, _ = mp.plain_request(text_msg("x"))
    aes, _ = mp.aes_request(text_msg("x"))
    cases = {
        "malformed-xml": (params, b"<xml><Content>abc</Content"),
        "not-xml": (params, b"hello"),
        "wrong-root": (params, b"<foo><MsgType>text</MsgType></foo>"),
        "empty-body": (params, b""),
        "not-utf8": (params, fields_xml(text_msg("加密")).encode("gbk")),
        "no-sender": (params, b"<xml><ToUserName>gh_x</ToUserName><MsgType>text</MsgType></xml>"),
        "no-account": (params, fields_xml({k: v for k, v in text_msg("x").items() if k != "ToUserName"}).encode()),
        "nested-field": (params, b"<xml><FromUserName><a>1</a></FromUserName><MsgType>text</MsgType></xml>"),
        "aes-without-encrypt": (aes, fields_xml(text_msg("x")).encode()),
        "missing-query": ({}, fields_xml(text_msg("x")).encode()),
        "garbage-base64": _signed_encrypt(mp, "!!!not base64!!!"),
        "short-ciphertext": _signed_encrypt(mp, "QUJD"),
        "plaintext-not-xml": mp.aes_request({}, inner="hello"),
        "empty-plaintext": mp.aes_request({}, inner=""),
        "other-account": _other_account(mp),
    }
    for name, (p, body) in cases.items():
        resp = mp.post(p, body)
        assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text[:200])
    assert processed_keys(session) == [] and follower(session) is None


def _signed_encrypt(mp: MpSender, encrypt: str) -> tuple[dict[str, str], bytes]:
    timestamp, nonce = mp.stamp()
    params = {"timestamp": timestamp, "nonce": nonce, "encrypt_type": "aes",
              "msg_signature": signature(TOKEN, timestamp, nonce, encrypt)}
    return params, f"<xml><ToUserName>{ACCOUNT}</ToUserName><Encrypt>{encrypt}</Encrypt></xml>".encode()


def _other_account(mp: MpSender) -> tuple[dict[str, str], bytes]:
    assert mp.crypto is not None
    encrypt = PrpCrypto(mp.crypto.key).encrypt(fields_xml(text_msg("帮助")), "wxsomeoneelse").decode()
    return _signed_encrypt(mp, encrypt)


def test_oversize_body_is_413(serve, session):
    mp = serve()
    params, _ = mp.plain_request(text_msg("x"))
    resp = mp.post(params, fields_xml(text_msg("帮" * 30_000)).encode())
    assert resp.status_code == 413
    assert processed_keys(session) == []


# ── messages and events ──────────────────────────────────────────────────────

def test_image_message_gets_the_not_text_reply(serve, session):
    mp = serve()
    assert mp.reply_text(mp.safe(image_msg()), encrypted=True) == render("chat/not_text.txt")
    assert len(processed_keys(session)) == 1


@pytest.mark.parametrize("mode", ["plain", "safe"])
def test_a_retried_msg_id_is_handled_once(serve, session, mode):
    mp = serve()
    fields = text_msg("储值卡")
    params, body = mp.plain_request(fields) if mode == "plain" else mp.aes_request(fields)
    replies = [mp.reply_text(mp.post(params, body), encrypted=mode == "safe") for _ in range(3)]
    assert replies[0] and replies.count(replies[0]) == 3
    assert processed_keys(session) == [f"mp:{fields['MsgId']}"]


def test_concurrent_retries_are_handled_once(serve, session):
    mp = serve()
    params, body = mp.aes_request(text_msg("储值卡"))
    results = at_once([lambda: mp.post(params, body)] * 4)
    assert [r.status_code for r in results] == [200] * 4
    assert len({mp.reply_text(r, encrypted=True) for r in results} - {""}) == 1
    assert len(processed_keys(session)) == 1


def test_a_menu_click_is_its_command_handled_once(serve, session):
    """A `click` on the 储值卡 menu is the message 储值卡: answered, and WeChat's retry of the same
    click (same sender and CreateTime) gets the same reply without a second handling."""
    mp = serve()
    created = int(time.time())
    params, body = mp.aes_request(event_msg("CLICK", "储值卡", create_time=created))
    first = mp.reply_text(mp.post(params, body), encrypted=True)
    assert first and "出错" not in first
    assert mp.reply_text(mp.post(params, body), encrypted=True) == first
    assert processed_keys(session) == [f"mp:{OPENID}:{created}:click"]
    assert follower(session).last_message_at is not None  # a click opens the 48-hour window too


def test_view_and_other_events_are_an_empty_200(serve, session):
    mp = serve()
    for event, key in (("VIEW", "http://localhost:8000/h5/card"), ("LOCATION", ""), ("click", ""),
                       ("TEMPLATESENDJOBFINISH", ""), ("some_future_event", "")):
        resp = mp.safe(event_msg(event, key))
        assert resp.status_code == 200 and resp.content == b"", event
    assert processed_keys(session) == []


def test_subscribe_is_welcomed_with_how_to_bind_and_unsubscribe_is_noted(serve, session):
    mp = serve()
    params, body = mp.plain_request(event_msg("subscribe"))
    welcome = mp.reply_text(mp.post(params, body))
    assert welcome == render("chat/mp_welcome.txt")
    assert "班主任" in welcome and "验证码" in welcome and "绑定 学号 验证码" in welcome
    assert mp.reply_text(mp.post(params, body)) == ""  # WeChat's retry of the same event
    row = follower(session)
    assert row is not None and row.following

    resp = mp.safe(event_msg("unsubscribe"))
    assert resp.status_code == 200 and resp.content == b""
    assert follower(session).following is False
    assert processed_keys(session) == []


def test_a_text_notes_when_the_follower_last_wrote(serve, session, today):
    mp = serve()
    assert follower(session) is None
    mp.plain(text_msg("帮助"))
    row = follower(session)
    assert row is not None and row.following
    assert row.last_message_at is not None and row.last_message_at.date() == today  # the service's clock
    other = "oAnotherFollower0000000000001"
    mp.safe(text_msg("帮助", sender=other))
    assert follower(session, other).last_message_at is not None
    assert count(session, MpFollower) == 2

"""The WeCom (企业微信) callback at /wechat/wecom: URL verification and encrypted messages.

Everything WeCom sends is checked here, at the edge: the outer XML is screened
before it is parsed, the signature (ours, compared in constant time) before
anything is decrypted, and malformed input of any kind is a 4xx, never a 500.
Only a well-formed, authentic message reaches the pipeline, as an `IncomingMessage`.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import logging
import re
import struct
import time
from xml.parsers.expat import ExpatError

import xmltodict
from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto
from wechatpy.enterprise.exceptions import InvalidCorpIdException
from wechatpy.exceptions import InvalidSignatureException

from bot.pipeline import handle_message
from core.messages import IncomingMessage
from core.render import render
from models.service import Service

log = logging.getLogger(__name__)

wecom = Blueprint("wecom", __name__)

PATH = "/wechat/wecom"
CHANNEL = "wecom"
# Characters XML 1.0 forbids even in CDATA. Text a sender typed may hold them; once the message
# is authenticated each becomes a space, so the text is answered rather than refused. Replaced, not
# dropped: dropping would join what was around it (`]]\x1b>` into `]]>`) into markup.
XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# What broken base64, a wrong key, bad padding or a truncated plaintext raise inside wechatpy.
UNDECRYPTABLE = (ValueError, TypeError, KeyError, IndexError, binascii.Error, struct.error,
                 UnicodeDecodeError, InvalidCorpIdException)
MEDIA_KINDS = frozenset({"image", "voice", "video", "location", "link", "file", "shortvideo"})
WELCOME_EVENTS = frozenset({"subscribe", "enter_agent"})


class MalformedInput(ValueError):
    """The request is not a well-formed WeCom callback (answered with 400)."""


@wecom.record_once
def _make_crypto(state: BlueprintSetupState) -> None:
    """One WeChatCrypto per app: the key is decoded once, not on every request."""
    settings = state.app.extensions["czk"].settings
    try:
        crypto = WeChatCrypto(settings.wecom_token, settings.wecom_aes_key, settings.wecom_corp_id)
    except (AssertionError, binascii.Error) as exc:
        raise RuntimeError("WECOM_AES_KEY must be the app's 43-character EncodingAESKey") from exc
    state.app.extensions["wecom_crypto"] = crypto


def _crypto() -> WeChatCrypto:
    return current_app.extensions["wecom_crypto"]


def _plain(status: int, text: str) -> Response:
    return Response(text, status=status, mimetype="text/plain")


def _query(*names: str) -> list[str]:
    values = [request.args.get(name, "") for name in names]
    if not all(values):
        raise MalformedInput(f"missing query parameter (need {', '.join(names)})")
    return values


def declares_dtd(data: str) -> bool:
    """Whether the document holds markup opening a declaration (`<!DOCTYPE`, `<!ENTITY`, …).

    DTDs are never part of a WeCom callback; refusing them before any parser sees the body stops
    entity expansion (billion laughs, external entities). XML's own tokens are followed left to
    right: the inside of a CDATA section or a comment is text (a message may well say
    "<!DOCTYPE"), and outside them `<!` opens nothing but a declaration. One pass, no
    backtracking: the screen costs the same for any body.
    """
    at = 0
    while (at := data.find("<!", at)) >= 0:
        if data.startswith("<![CDATA[", at):
            end = data.find("]]>", at + 9)
        elif data.startswith("<!--", at):
            end = data.find("-->", at + 4)
        else:
            return True
        if end < 0:
            return False  # an unterminated section: the parser refuses the document
        at = end + 3
    return False


def parse_xml(data: str | bytes) -> dict[str, object]:
    """The fields of a `<xml>…</xml>` document, refusing DTDs and anything malformed."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedInput("body is not UTF-8") from exc
    if not data.strip():
        raise MalformedInput("empty body")
    if declares_dtd(data):
        raise MalformedInput("DTD or entity declaration")
    try:
        # xmltodict >= 1.0.1 refuses entity declarations itself; this is the second wall.
        doc = xmltodict.parse(data, disable_entities=True)
    except (ExpatError, ValueError) as exc:
        raise MalformedInput(f"malformed XML: {exc}") from exc
    root = doc.get("xml") if isinstance(doc, dict) else None
    if not isinstance(root, dict):
        raise MalformedInput("no <xml> root element")
    return root


def _field(fields: dict[str, object], name: str) -> str:
    value = fields.get(name)
    return value.strip() if isinstance(value, str) else ""


def incoming_message(fields: dict[str, object]) -> IncomingMessage:
    """Map a decrypted WeCom message to the neutral message every channel produces."""
    sender = _field(fields, "FromUserName")
    kind = _field(fields, "MsgType").lower()
    if not sender or not kind:
        raise MalformedInput("message without FromUserName or MsgType")
    if kind == "event":
        event = _field(fields, "Event").lower()
        key = f"{sender}:{_field(fields, 'CreateTime')}:{event}"
        return IncomingMessage(CHANNEL, sender, event, msg_key=key, kind="event")
    msg_key = _field(fields, "MsgId") or None
    if kind == "text":
        content = fields.get("Content")
        return IncomingMessage(CHANNEL, sender, content if isinstance(content, str) else "", msg_key=msg_key)
    return IncomingMessage(CHANNEL, sender, "", msg_key=msg_key, kind=kind)


def _cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def passive_text_reply(to_user: str, corp_id: str, text: str, create_time: int) -> str:
    """The plaintext XML of a passive text reply (encrypted before it is sent)."""
    return (f"<xml><ToUserName>{_cdata(to_user)}</ToUserName><FromUserName>{_cdata(corp_id)}</FromUserName>"
            f"<CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content>{_cdata(text)}</Content></xml>")


def _event_reply(service: Service, msg: IncomingMessage) -> str:
    """Entering the app gets a welcome (once per event); other events get nothing."""
    if msg.text not in WELCOME_EVENTS:
        return ""
    if msg.msg_key and not service.dedupe.claim(f"{CHANNEL}:{msg.msg_key}"):
        return ""
    return render("chat/welcome.txt")


def signature_matches(token: str, signature: str, timestamp: str, nonce: str, encrypt: str) -> bool:
    """WeCom's msg_signature (sha1 of the sorted token, timestamp, nonce and ciphertext), compared in
    constant time: how much of a forged signature is right does not show in how long we take."""
    parts = sorted(part.encode("utf-8", "replace") for part in (token, timestamp, nonce, encrypt))
    expected = hashlib.sha1(b"".join(parts)).hexdigest().encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))


def _decrypt(crypto: WeChatCrypto, signature: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """The plaintext of `encrypt`, once its signature is ours; wechatpy only decrypts."""
    if not signature_matches(crypto.token, signature, timestamp, nonce, encrypt):
        raise InvalidSignatureException()
    return PrpCrypto(crypto.key).decrypt(encrypt, crypto.corp_id)


def _check_echostr(signature: str, timestamp: str, nonce: str, echostr: str) -> str:
    crypto = _crypto()
    if " " in echostr and not signature_matches(crypto.token, signature, timestamp, nonce, echostr):
        # Base64 has no spaces: a space is a "+" that some hop left unescaped in the query.
        echostr = echostr.replace(" ", "+")
    return _decrypt(crypto, signature, timestamp, nonce, echostr)


@wecom.get(PATH)
def verify_url() -> Response:
    """URL verification: answer the decrypted echostr within WeCom's 1 s."""
    try:
        signature, timestamp, nonce, echostr = _query("msg_signature", "timestamp", "nonce", "echostr")
        echo = _check_echostr(signature, timestamp, nonce, echostr)
    except InvalidSignatureException:
        log.warning("WeCom URL verification with a bad signature from %s", request.remote_addr)
        return _plain(403, "invalid signature")
    except (MalformedInput, *UNDECRYPTABLE) as exc:
        # Our own reason, or only the type: a decoding error's message quotes the decrypted bytes.
        log.warning("WeCom URL verification rejected: %s",
                    exc if isinstance(exc, MalformedInput) else type(exc).__name__)
        return _plain(400, "bad request")
    return _plain(200, echo)


@wecom.post(PATH)
def receive() -> Response:
    """An encrypted message or event: handle it once, answer with an encrypted passive reply."""
    crypto = _crypto()
    try:
        signature, timestamp, nonce = _query("msg_signature", "timestamp", "nonce")
        envelope = parse_xml(request.get_data(cache=False))
        encrypt = _field(envelope, "Encrypt")
        if not encrypt:
            raise MalformedInput("no Encrypt element")
        inner = _decrypt(crypto, signature, timestamp, nonce, encrypt)
        msg = incoming_message(parse_xml(XML_ILLEGAL.sub(" ", inner)))
    except InvalidSignatureException:
        log.warning("WeCom callback with a bad signature from %s", request.remote_addr)
        return _plain(403, "invalid signature")
    except (MalformedInput, *UNDECRYPTABLE) as exc:
        # Our own reason, or only the type: a decoding error's message quotes the decrypted bytes.
        log.warning("WeCom callback rejected: %s", exc if isinstance(exc, MalformedInput) else type(exc).__name__)
        return _plain(400, "bad request")

    service: Service = current_app.extensions["czk"]
    if msg.kind == "event":
        text = _event_reply(service, msg)
    else:
        text = handle_message(service, msg).text
    if not text:
        return Response(b"", status=200, mimetype="text/plain")
    xml = passive_text_reply(msg.sender, crypto.corp_id, text, int(time.time()))
    return Response(crypto.encrypt_message(xml, nonce, timestamp), status=200, mimetype="application/xml")

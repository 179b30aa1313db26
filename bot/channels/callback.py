"""What the WeChat callbacks share (WeCom at /wechat/wecom, the Official Account at /wechat/mp).

Both receive XML that is screened before it is parsed, signatures compared in constant time
before anything is decrypted, the same AES message encryption (only the receive id differs:
the corp id or the app id), and answer with the same passive reply. Malformed input of any kind
is a `MalformedInput` or one of `UNDECRYPTABLE`, answered with 400, never a 500.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import struct
from xml.etree.ElementTree import Element, ParseError, fromstring

from flask import Response, request
from wechatpy.crypto import PrpCrypto, WeChatCrypto
from wechatpy.enterprise.exceptions import InvalidCorpIdException
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException

from core.messages import IncomingMessage

# Characters XML 1.0 forbids even in CDATA. Text a sender typed may hold them; once the message
# is authenticated each becomes a space, so the text is answered rather than refused. Replaced, not
# dropped: dropping would join what was around it (`]]\x1b>` into `]]>`) into markup.
XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# What broken base64, a wrong key, bad padding, a truncated plaintext or another account's
# receive id raise inside wechatpy.
UNDECRYPTABLE = (ValueError, TypeError, KeyError, IndexError, binascii.Error, struct.error,
                 UnicodeDecodeError, InvalidCorpIdException, InvalidAppIdException)


class MalformedInput(ValueError):
    """The request is not a well-formed WeChat callback (answered with 400)."""


def plain(status: int, text: str) -> Response:
    """A short text/plain answer (verification echoes, refusals)."""
    return Response(text, status=status, mimetype="text/plain")


def empty() -> Response:
    """The empty 200 WeChat takes as "received, no reply"."""
    return Response(b"", status=200, mimetype="text/plain")


def query(*names: str) -> list[str]:
    """The named query parameters, all of them present and non-empty."""
    values = [request.args.get(name, "") for name in names]
    if not all(values):
        raise MalformedInput(f"missing query parameter (need {', '.join(names)})")
    return values


def declares_dtd(data: str) -> bool:
    """Whether the document holds markup opening a declaration (`<!DOCTYPE`, `<!ENTITY`, …).

    DTDs are never part of a WeChat callback; refusing them before any parser sees the body stops
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


def decode_body(data: str | bytes) -> str:
    """A request body as text: UTF-8 or refused."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedInput("body is not UTF-8") from exc


def parse_xml(data: str | bytes) -> dict[str, object]:
    """The fields of a `<xml>…</xml>` document, refusing DTDs and anything malformed."""
    data = decode_body(data)
    if not data.strip():
        raise MalformedInput("empty body")
    if declares_dtd(data):
        raise MalformedInput("DTD or entity declaration")
    try:
        root = fromstring(data)
    except (ParseError, ValueError) as exc:
        raise MalformedInput(f"malformed XML: {exc}") from exc
    if root.tag != "xml":
        raise MalformedInput("no <xml> root element")
    return _fields(root)


def _fields(element: Element) -> dict[str, object]:
    """An element's children by tag: a leaf is its text (None when empty), an element with children
    a dict of them, and a tag that occurs more than once a list (never a text: refused where one is
    read). ElementTree rather than xmltodict: half the parsing time per message, and the screen above
    already keeps every DTD away from the parser."""
    out: dict[str, object] = {}
    for child in element:
        value: object = _fields(child) if len(child) else child.text
        if child.tag in out:
            before = out[child.tag]
            out[child.tag] = [*before, value] if isinstance(before, list) else [before, value]
        else:
            out[child.tag] = value
    return out


def parse_message(data: str | bytes) -> dict[str, object]:
    """The fields of an authenticated message, whose typed text may hold characters XML forbids."""
    return parse_xml(XML_ILLEGAL.sub(" ", decode_body(data)))


def field(fields: dict[str, object], name: str) -> str:
    """A text field of a parsed message, stripped; "" when absent or not text."""
    value = fields.get(name)
    return value.strip() if isinstance(value, str) else ""


def incoming_message(channel: str, fields: dict[str, object]) -> IncomingMessage:
    """Map a parsed WeChat message (WeCom's and the Official Account's have the same fields) to the
    neutral message every channel produces.

    A menu click whose EventKey holds text is that text, sent by the sender: the menu's keys are
    chat commands (`储值卡`, `任务`, `帮助`). It is keyed, like every event, by sender and
    CreateTime, so WeChat's retries of one click are handled once. Other events keep their name.
    """
    sender = field(fields, "FromUserName")
    kind = field(fields, "MsgType").lower()
    if not sender or not kind:
        raise MalformedInput("message without FromUserName or MsgType")
    if kind == "event":
        event = field(fields, "Event").lower()
        key = f"{sender}:{field(fields, 'CreateTime')}:{event}"
        command = field(fields, "EventKey")
        if event == "click" and command:
            return IncomingMessage(channel, sender, command, msg_key=key)
        return IncomingMessage(channel, sender, event, msg_key=key, kind="event")
    msg_key = field(fields, "MsgId") or None
    if kind == "text":
        content = fields.get("Content")
        return IncomingMessage(channel, sender, content if isinstance(content, str) else "", msg_key=msg_key)
    return IncomingMessage(channel, sender, "", msg_key=msg_key, kind=kind)


def signature_matches(token: str, signature: str, *parts: str) -> bool:
    """WeChat's signature (sha1 of the sorted token and parts: timestamp, nonce and, for an encrypted
    message, its ciphertext), compared in constant time: how much of a forged signature is right
    does not show in how long we take."""
    ordered = sorted(part.encode("utf-8", "replace") for part in (token, *parts))
    expected = hashlib.sha1(b"".join(ordered)).hexdigest().encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))


def cdata(value: str) -> str:
    """`value` as CDATA, a `]]>` inside it split across two sections."""
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def passive_text_reply(to_user: str, from_user: str, text: str, create_time: int) -> str:
    """The plaintext XML of a passive text reply: to the sender, from the account the message was
    addressed to (the corp id, or the Official Account's original id)."""
    return (f"<xml><ToUserName>{cdata(to_user)}</ToUserName><FromUserName>{cdata(from_user)}</FromUserName>"
            f"<CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content>{cdata(text)}</Content></xml>")


class MessageCrypto:
    """WeChat's message encryption for one account (AES-256-CBC, the receive id sealed inside):
    WeCom's receive id is the corp id, the Official Account's its app id."""

    def __init__(self, token: str, aes_key: str, receive_id: str) -> None:
        """Raises ValueError unless `aes_key` is an EncodingAESKey (43 characters of base64)."""
        try:
            self._envelope = WeChatCrypto(token, aes_key, receive_id)
        except (AssertionError, binascii.Error) as exc:
            raise ValueError("not an EncodingAESKey") from exc
        self.token = token
        self.receive_id = receive_id
        self._key = self._envelope.key

    def decrypt(self, signature: str, timestamp: str, nonce: str, encrypt: str) -> str:
        """The plaintext of `encrypt`, once its signature is ours (checked here, in constant time);
        raises InvalidSignatureException, or one of UNDECRYPTABLE for anything malformed."""
        if not signature_matches(self.token, signature, timestamp, nonce, encrypt):
            raise InvalidSignatureException()
        return PrpCrypto(self._key).decrypt(encrypt, self.receive_id)

    def encrypt(self, xml: str, nonce: str, timestamp: str) -> str:
        """The encrypted passive reply: Encrypt, MsgSignature, TimeStamp and Nonce."""
        return self._envelope.encrypt_message(xml, nonce, timestamp)


def xml_reply(xml: str, crypto: MessageCrypto | None, nonce: str, timestamp: str) -> Response:
    """A passive reply, encrypted when `crypto` is given (the request was), plain otherwise."""
    body = crypto.encrypt(xml, nonce, timestamp) if crypto is not None else xml
    return Response(body, status=200, mimetype="application/xml")

"""The WeCom (企业微信) callback at /wechat/wecom: URL verification and encrypted messages.

Everything WeCom sends is checked here, at the edge (bot/channels/callback.py, shared with the
Official Account): the outer XML is screened before it is parsed, the signature (ours, compared in
constant time) before anything is decrypted, and malformed input of any kind is a 4xx, never a 500.
Only a well-formed, authentic message reaches the pipeline, as an `IncomingMessage`.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from wechatpy.exceptions import InvalidSignatureException

from bot.channels import callback
from bot.channels.callback import (
    UNDECRYPTABLE,
    MalformedInput,
    MessageCrypto,
    parse_xml,
    passive_text_reply,
    signature_matches,
)
from bot.pipeline import handle_message
from core.messages import IncomingMessage
from core.render import render
from models.service import Service

log = logging.getLogger(__name__)

wecom = Blueprint("wecom", __name__)

PATH = "/wechat/wecom"
CHANNEL = "wecom"
MEDIA_KINDS = frozenset({"image", "voice", "video", "location", "link", "file", "shortvideo"})
WELCOME_EVENTS = frozenset({"subscribe", "enter_agent"})


@wecom.record_once
def _make_crypto(state: BlueprintSetupState) -> None:
    """One MessageCrypto per app: the key is decoded once, not on every request."""
    settings = state.app.extensions["czk"].settings
    try:
        crypto = MessageCrypto(settings.wecom_token, settings.wecom_aes_key, settings.wecom_corp_id)
    except ValueError as exc:
        raise RuntimeError("WECOM_AES_KEY must be the app's 43-character EncodingAESKey") from exc
    state.app.extensions["wecom_crypto"] = crypto


def _crypto() -> MessageCrypto:
    return current_app.extensions["wecom_crypto"]


def incoming_message(fields: dict[str, object]) -> IncomingMessage:
    """Map a decrypted WeCom message to the neutral message every channel produces (a menu click
    on a chat command is that command)."""
    return callback.incoming_message(CHANNEL, fields)


def _event_reply(service: Service, msg: IncomingMessage) -> str:
    """Entering the app gets a welcome (once per event); other events get nothing."""
    if msg.text not in WELCOME_EVENTS:
        return ""
    if msg.msg_key and not service.dedupe.claim(f"{CHANNEL}:{msg.msg_key}"):
        return ""
    return render("chat/welcome.txt")


def _check_echostr(signature: str, timestamp: str, nonce: str, echostr: str) -> str:
    crypto = _crypto()
    if " " in echostr and not signature_matches(crypto.token, signature, timestamp, nonce, echostr):
        # Base64 has no spaces: a space is a "+" that some hop left unescaped in the query.
        echostr = echostr.replace(" ", "+")
    return crypto.decrypt(signature, timestamp, nonce, echostr)


@wecom.get(PATH)
def verify_url() -> Response:
    """URL verification: answer the decrypted echostr within WeCom's 1 s."""
    try:
        signature, timestamp, nonce, echostr = callback.query("msg_signature", "timestamp", "nonce", "echostr")
        echo = _check_echostr(signature, timestamp, nonce, echostr)
    except InvalidSignatureException:
        log.warning("WeCom URL verification with a bad signature from %s", request.remote_addr)
        return callback.plain(403, "invalid signature")
    except (MalformedInput, *UNDECRYPTABLE) as exc:
        # Our own reason, or only the type: a decoding error's message quotes the decrypted bytes.
        log.warning("WeCom URL verification rejected: %s",
                    exc if isinstance(exc, MalformedInput) else type(exc).__name__)
        return callback.plain(400, "bad request")
    return callback.plain(200, echo)


@wecom.post(PATH)
def receive() -> Response:
    """An encrypted message or event: handle it once, answer with an encrypted passive reply."""
    crypto = _crypto()
    try:
        signature, timestamp, nonce = callback.query("msg_signature", "timestamp", "nonce")
        envelope = parse_xml(request.get_data(cache=False))
        encrypt = callback.field(envelope, "Encrypt")
        if not encrypt:
            raise MalformedInput("no Encrypt element")
        inner = crypto.decrypt(signature, timestamp, nonce, encrypt)
        msg = incoming_message(callback.parse_message(inner))
    except InvalidSignatureException:
        log.warning("WeCom callback with a bad signature from %s", request.remote_addr)
        return callback.plain(403, "invalid signature")
    except (MalformedInput, *UNDECRYPTABLE) as exc:
        # Our own reason, or only the type: a decoding error's message quotes the decrypted bytes.
        log.warning("WeCom callback rejected: %s", exc if isinstance(exc, MalformedInput) else type(exc).__name__)
        return callback.plain(400, "bad request")

    service: Service = current_app.extensions["czk"]
    if msg.kind == "event":
        text = _event_reply(service, msg)
    else:
        text = handle_message(service, msg).text
    if not text:
        return callback.empty()
    xml = passive_text_reply(msg.sender, crypto.receive_id, text, int(time.time()))
    return callback.xml_reply(xml, crypto, nonce, timestamp)

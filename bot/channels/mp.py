"""The Official Account (公众号) callback at /wechat/mp: URL verification and messages in plaintext,
compatible and safe mode, exactly as WeChat sends them (PRODUCT.md §4.1).

The edge is WeCom's (bot/channels/callback.py): the XML screened before it is parsed, signatures
compared in constant time before anything is decrypted or parsed, malformed input a 4xx. Plaintext
mode signs only the token, timestamp and nonce (`signature`); with `encrypt_type=aes` the
`<Encrypt>` element is signed (`msg_signature`) and decrypted with MP_AES_KEY, the receive id being
MP_APP_ID. In compatible mode the body carries the plain fields beside `<Encrypt>`: the encrypted
copy, the authenticated one, is the one read. The passive reply is encrypted when the request was.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from sqlalchemy.exc import SQLAlchemyError
from wechatpy.exceptions import InvalidSignatureException

from bot.channels import callback
from bot.channels.callback import UNDECRYPTABLE, MalformedInput, MessageCrypto, field, parse_message
from bot.pipeline import handle_message
from core.config import Settings
from core.messages import IncomingMessage
from core.render import render
from models.errors import log_failure
from models.followers import note_follower
from models.service import Service

log = logging.getLogger(__name__)

mp = Blueprint("mp", __name__)

PATH = "/wechat/mp"
CHANNEL = "mp"
# Events after which WeChat accepts customer-service messages for 48 hours, as a message does
# (a click is handled as a message and noted there).
WINDOW_EVENTS = frozenset({"subscribe", "scan"})


class NoAesKey(Exception):
    """An authentic encrypted callback while MP_AES_KEY is unset (answered with 400)."""


def enabled(settings: Settings) -> bool:
    """Whether the Official Account channel is on: MP_APP_ID and MP_TOKEN are set."""
    return bool(settings.mp_app_id and settings.mp_token)


@mp.record_once
def _make_crypto(state: BlueprintSetupState) -> None:
    """The account's MessageCrypto, built once (None without MP_AES_KEY: plaintext mode only)."""
    settings = state.app.extensions["czk"].settings
    crypto = None
    if settings.mp_aes_key:
        try:
            crypto = MessageCrypto(settings.mp_token, settings.mp_aes_key, settings.mp_app_id)
        except ValueError as exc:
            raise RuntimeError("MP_AES_KEY must be the account's 43-character EncodingAESKey") from exc
    state.app.extensions["mp_crypto"] = crypto


def _token() -> str:
    return current_app.extensions["czk"].settings.mp_token


@mp.get(PATH)
def verify_url() -> Response:
    """URL verification: the echostr as is, when the signature is ours (within WeChat's 1 s)."""
    try:
        signature, timestamp, nonce, echostr = callback.query("signature", "timestamp", "nonce", "echostr")
    except MalformedInput as exc:
        log.warning("Official Account URL verification rejected: %s", exc)
        return callback.plain(400, "bad request")
    if not callback.signature_matches(_token(), signature, timestamp, nonce):
        log.warning("Official Account URL verification with a bad signature from %s", request.remote_addr)
        return callback.plain(403, "invalid signature")
    return callback.plain(200, echostr)


def _read(timestamp: str, nonce: str) -> tuple[dict[str, object], MessageCrypto | None]:
    """The authenticated message's fields, and the crypto to encrypt the reply with (None: plain)."""
    if request.args.get("encrypt_type", "").strip().lower() != "aes":
        (signature,) = callback.query("signature")
        if not callback.signature_matches(_token(), signature, timestamp, nonce):
            raise InvalidSignatureException()
        return parse_message(request.get_data(cache=False)), None
    (msg_signature,) = callback.query("msg_signature")
    envelope = parse_message(request.get_data(cache=False))
    encrypt = field(envelope, "Encrypt")
    if not encrypt:
        raise MalformedInput("encrypt_type=aes without an Encrypt element")
    crypto: MessageCrypto | None = current_app.extensions["mp_crypto"]
    if crypto is None:
        # Checked with the token alone, so only a request WeChat really sent is blamed on our setup.
        if not callback.signature_matches(_token(), msg_signature, timestamp, nonce, encrypt):
            raise InvalidSignatureException()
        raise NoAesKey()
    return parse_message(crypto.decrypt(msg_signature, timestamp, nonce, encrypt)), crypto


def _note(service: Service, openid: str, *, following: bool = True, wrote: bool = True) -> None:
    """Note the follower (the 48-hour customer-service window) in a transaction of its own. A failure
    is logged and does not cost the sender their reply."""
    try:
        with service.sessions() as session:
            note_follower(session, openid, service.now(), wrote=wrote, following=following)
            session.commit()
    except SQLAlchemyError as exc:
        log_failure(log, "could not note an Official Account follower", exc)


def _event_reply(service: Service, msg: IncomingMessage) -> str:
    """Following gets the welcome (once per event), leaving is noted; other events get nothing."""
    if msg.text == "unsubscribe":
        _note(service, msg.sender, following=False, wrote=False)
        return ""
    if msg.text not in WINDOW_EVENTS:
        return ""
    _note(service, msg.sender)
    if msg.text != "subscribe":
        return ""
    if msg.msg_key and not service.dedupe.claim(f"{CHANNEL}:{msg.msg_key}"):
        return ""
    return render("chat/mp_welcome.txt")


@mp.post(PATH)
def receive() -> Response:
    """A message or event, plain or encrypted: handle it once, answer with a passive reply in the
    request's mode."""
    try:
        timestamp, nonce = callback.query("timestamp", "nonce")
        fields, crypto = _read(timestamp, nonce)
        msg = callback.incoming_message(CHANNEL, fields)
        account = field(fields, "ToUserName")
        if not account:
            raise MalformedInput("message without ToUserName")
    except InvalidSignatureException:
        log.warning("Official Account callback with a bad signature from %s", request.remote_addr)
        return callback.plain(403, "invalid signature")
    except NoAesKey:
        # Not 403: the signature is WeChat's. The account is in safe or compatible mode and we hold
        # no key; 400 (not 500) and a log line naming the setting are all we can do.
        log.error("Official Account sent an encrypted callback but MP_AES_KEY is unset")
        return callback.plain(400, "encrypted callbacks need MP_AES_KEY")
    except (MalformedInput, *UNDECRYPTABLE) as exc:
        # Our own reason, or only the type: a decoding error's message quotes the decrypted bytes.
        log.warning("Official Account callback rejected: %s",
                    exc if isinstance(exc, MalformedInput) else type(exc).__name__)
        return callback.plain(400, "bad request")

    service: Service = current_app.extensions["czk"]
    if msg.kind == "event":
        text = _event_reply(service, msg)
    else:
        _note(service, msg.sender)
        text = handle_message(service, msg).text
    if not text:
        return callback.empty()
    xml = callback.passive_text_reply(msg.sender, account, text, int(time.time()))
    return callback.xml_reply(xml, crypto, nonce, timestamp)

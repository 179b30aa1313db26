"""The inbound road every channel takes: dedupe, identify the sender, dispatch, commit, reply."""

from __future__ import annotations

import logging
import time

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError

import handlers  # noqa: F401  (registers every command)
from bot.messages import IncomingMessage, Reply
from bot.service import Service
from bot.templating import render
from handlers.registry import Context, UnitOfWork, clean_text, registry
from models.db import ConnectionLost
from models.schema import ProcessedMessage

log = logging.getLogger(__name__)

# A retry that arrives while the first delivery is still being handled waits this long for the
# first one's reply (WeChat gives each attempt 5 s). Longer than a claim lives (bot.dedupe.CLAIM_TTL):
# a retry never gives up on a message whose handler died; it takes the lapsed claim over instead.
TWIN_WAIT_S = 4.0


def _stored_reply(service: Service, key: str) -> str | None:
    with service.sessions() as session:
        return session.scalar(select(ProcessedMessage.reply).where(ProcessedMessage.msg_key == key))


def _await_twin(service: Service, key: str) -> Reply | None:
    """The reply of the worker handling the same message, once it is stored; None when that
    worker's claim lapsed first (it died mid-message) and the claim is now ours to handle it."""
    deadline = time.monotonic() + TWIN_WAIT_S
    while True:
        stored = _stored_reply(service, key)
        if stored is not None:
            return Reply(stored)
        if service.dedupe.claim(key):
            return None
        if time.monotonic() >= deadline:
            return Reply("")  # still being handled: WeChat's next retry asks again
        time.sleep(0.05)


def handle_message(service: Service, msg: IncomingMessage) -> Reply:
    """Handle one inbound message at most once and return the reply to send back."""
    key = f"{msg.channel}:{msg.msg_key}" if msg.msg_key else None
    if key and not service.dedupe.claim(key):
        twin = _await_twin(service, key)
        if twin is not None:
            return twin
    try:
        try:
            return _handle_once(service, msg, key)
        except (DBAPIError, ConnectionLost) as exc:
            if isinstance(exc, DBAPIError) and not exc.connection_invalidated:
                raise
            # A pooled connection the server had dropped (a restart): once more, on a fresh one. Had the
            # first attempt committed after all, its processed row makes this one an IntegrityError below.
            log.warning("database connection lost; handling %s again on a fresh one", key)
            return _handle_once(service, msg, key)
    except IntegrityError:
        # The same message committed by another worker while Redis was unavailable.
        if key:
            stored = _stored_reply(service, key)
            if stored is not None:
                return Reply(stored)
        log.exception("integrity error handling %s", key)
    except Exception:
        log.exception("error handling message %s from %s", key, msg.sender)
    if key:
        service.dedupe.release(key)
    return Reply(render("chat/error.txt"))


def _handle_once(service: Service, msg: IncomingMessage, key: str | None) -> Reply:
    work = UnitOfWork(service.sessions, service.recordings)
    try:
        reply = _dispatch(service, work, msg, key)
        if key and not work.processed_written:
            work.session.add(ProcessedMessage(msg_key=key, sender=msg.sender, reply=reply.text))
        if work.opened:
            work.session.commit()
    finally:
        work.close()
    if work.queued_evaluation:
        service.evaluator.recorded()  # after the commit: the early-warning check of what was recorded
    return reply


def _dispatch(service: Service, work: UnitOfWork, msg: IncomingMessage, key: str | None) -> Reply:
    if msg.kind != "text":
        return Reply(render("chat/not_text.txt"))
    directory = service.directory.get(service.sessions)
    actor = directory.actor(msg.sender)
    if actor is None:
        return Reply(render("chat/unknown_sender.txt", userid=msg.sender))
    text = clean_text(msg.text)
    if not text:
        return Reply(render("chat/empty.txt"))
    ctx = Context(work=work, actor=actor, catalogue=service.catalogue, today=service.today(), msg=msg,
                  settings=service.settings, directory=directory, processed_key=key,
                  quick_reply=service.background)
    found = registry.resolve(text)
    if found is not None:
        cmd, args = found
        if not cmd.admits(actor):
            return Reply(render("chat/not_allowed.txt", command=cmd.names[0], actor=actor))
        return cmd.handler(msg, args, ctx)
    assert registry.fallback is not None
    return registry.fallback(msg, text, ctx)

"""The inbound road every channel takes: identify the sender, dispatch, commit with dedupe, reply.

Every message with a key (MsgId; sender + CreateTime for a menu click) is handled at most once by
its processed row: its unique key is written in the same transaction (for a recording, the same
statement) as whatever the message changed. A twin (WeChat's retry, racing the first delivery or
after it, on any worker) meets that key at its commit, writes nothing, and answers the stored reply;
a first delivery that failed left no row, so its retry is handled. No claim is taken before: the
database's key alone decides, with Redis or without it, and nothing outlives a killed worker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError

import handlers  # noqa: F401  (registers every command)
from core import metrics
from core import render as templating
from core.messages import IncomingMessage, Reply
from core.render import render
from handlers.registry import Context, UnitOfWork, clean_text, registry
from models.binding import follower_identity
from models.db import ConnectionLost
from models.directory import console_user
from models.errors import log_failure
from models.schema import ProcessedMessage
from models.service import Service

log = logging.getLogger(__name__)


def _stored_reply(service: Service, key: str) -> str | None:
    with service.sessions() as session:
        return session.scalar(select(ProcessedMessage.reply).where(ProcessedMessage.msg_key == key))


# A reply rendered from one of these templates (by stem, under templates/chat/) answered a
# refusal or a message that could not be acted on; anything else is "ok".
_REFUSED = ("not_allowed", "unknown_sender", "sender_ambiguous", "_out_of_scope", "_students_own", "_cannot_record",
            "_not_owner", "_not_yours", "mp_unbound", "_locked")
_BAD_INPUT = ("_usage", "_not_found", "_ambiguous", "_rejected", "unknown_command", "bad_", "empty", "not_text",
              "_already", "undo_nothing", "task_closed")


def _outcome_of(templates: list[str]) -> str:
    stems = [t.removeprefix("chat/").removesuffix(".txt") for t in templates if t.startswith("chat/")]
    if any(mark in stem for stem in stems for mark in _REFUSED):
        return "refused"
    if any(mark in stem for stem in stems for mark in _BAD_INPUT):
        return "bad-input"
    return "ok"


@dataclass
class Trace:
    """What one message's log line and metrics say about it: keys and names of commands, never text
    or people (PRODUCT.md §6)."""

    channel: str
    key: str | None
    command: str = "-"
    outcome: str = "ok"
    started: float = field(default_factory=time.perf_counter)

    def done(self) -> None:
        ms = (time.perf_counter() - self.started) * 1000
        log.info("message channel=%s key=%s command=%s outcome=%s ms=%.0f",
                 self.channel, self.key or "-", self.command, self.outcome, ms)
        metrics.message_handled(self.channel, self.outcome)


def handle_message(service: Service, msg: IncomingMessage) -> Reply:
    """Handle one inbound message at most once and return the reply to send back; log one line for
    it (channel, key, command, outcome, ms) and count it."""
    key = f"{msg.channel}:{msg.msg_key}" if msg.msg_key else None
    trace = Trace(msg.channel, key)
    try:
        return _handle(service, msg, key, trace)
    finally:
        trace.done()


def _handle(service: Service, msg: IncomingMessage, key: str | None, trace: Trace) -> Reply:
    try:
        try:
            return _handle_once(service, msg, key, trace)
        except (DBAPIError, ConnectionLost) as exc:
            if isinstance(exc, DBAPIError) and not exc.connection_invalidated:
                raise
            # A pooled connection the server had dropped (a restart): once more, on a fresh one. Had the
            # first attempt committed after all, its processed row makes this one an IntegrityError below.
            log.warning("database connection lost; handling %s again on a fresh one", key)
            return _handle_once(service, msg, key, trace)
    except IntegrityError as exc:
        # A twin of this message (WeChat's retry, racing it or after it) committed first: its processed
        # row's key is taken, nothing of ours was written, and the sender gets the twin's reply.
        if key:
            stored = _stored_reply(service, key)
            if stored is not None:
                trace.outcome = "duplicate"
                return Reply(stored)
        log_failure(log, f"integrity error handling {key}", exc)
    except Exception as exc:  # noqa: BLE001 - logged (without its message: it may quote data), answered politely
        log_failure(log, f"error handling message {key} (command {trace.command})", exc)
    trace.outcome = "error"
    return Reply(render("chat/error.txt"))


def _handle_once(service: Service, msg: IncomingMessage, key: str | None, trace: Trace) -> Reply:
    work = UnitOfWork(service.sessions, service.recordings)
    rendered = templating.rendered.set([])
    try:
        reply = _dispatch(service, work, msg, key, trace)
        trace.outcome = _outcome_of(templating.rendered.get() or [])
        if key and not work.processed_written:
            work.session.add(ProcessedMessage(msg_key=key, sender=msg.sender, reply=reply.text))
        if work.opened:
            work.session.commit()
    finally:
        templating.rendered.reset(rendered)
        work.close()
    if work.queued_evaluation:
        service.evaluator.recorded()  # after the commit: the early-warning check of what was recorded
    return reply


def _dispatch(service: Service, work: UnitOfWork, msg: IncomingMessage, key: str | None, trace: Trace) -> Reply:
    if msg.kind != "text":
        trace.command = "not-text"
        return Reply(render("chat/not_text.txt"))
    directory = service.directory.get(service.sessions)
    if msg.channel == "mp":  # an Official Account follower is who their binding says
        actor = follower_identity(work.session, msg.sender)
    else:
        sender = directory.identify(msg.sender, console_user=console_user() if msg.channel == "console" else None)
        if sender.ambiguous:
            trace.command = "unknown-sender"
            return Reply(render("chat/sender_ambiguous.txt", userid=msg.sender))
        actor = sender.actor
        if actor is None:
            trace.command = "unknown-sender"
            return Reply(render("chat/unknown_sender.txt", userid=msg.sender))
    text = clean_text(msg.text)
    if actor.is_unbound_follower and not ((found := registry.resolve(text)) and found[0].admits(actor)):
        trace.command = "unbound-follower"
        return Reply(render("chat/mp_unbound.txt"))
    if not text:
        trace.command = "empty"
        return Reply(render("chat/empty.txt"))
    ctx = Context(work=work, actor=actor, catalogue=service.catalogue, today=service.today(), msg=msg,
                  settings=service.settings, directory=directory, processed_key=key,
                  quick_reply=service.background, notify=service.notify)
    found = registry.resolve(text)
    if found is not None:
        cmd, args = found
        trace.command = cmd.names[0]
        if not cmd.admits(actor):
            return Reply(render("chat/not_allowed.txt", command=cmd.names[0], actor=actor, audience=cmd.audience))
        return cmd.handler(msg, args, ctx)
    assert registry.fallback is not None
    trace.command = "fallback"
    return registry.fallback(msg, text, ctx)

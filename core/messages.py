"""The neutral message every channel produces, and the reply every channel renders."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IncomingMessage:
    """A message from any channel, parsed once at the edge."""

    channel: str  # wecom | mp | console
    sender: str  # the channel's user id (企业微信账号 for WeCom and the console)
    text: str
    msg_key: str | None = None  # MsgId, or FromUserName+CreateTime for events
    kind: str = "text"  # text | image | voice | event …


@dataclass(frozen=True)
class Reply:
    """What the sender reads; empty text means "answer nothing"."""

    text: str

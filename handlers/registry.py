"""Commands are registered with what they accept; dispatch finds the longest matching name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy.orm import Session

from bot.config import Settings
from bot.messages import IncomingMessage, Reply
from models.authz import Actor
from models.catalogue import Catalogue, normalise
from models.directory import Directory
from models.periods import Calendar

Handler = Callable[[IncomingMessage, str, "Context"], Reply]


@dataclass
class Context:
    """What a handler may use: the session (its transaction), the sender, the clock."""

    session: Session
    actor: Actor
    catalogue: Catalogue
    today: date
    msg: IncomingMessage
    settings: Settings
    directory: Directory

    @property
    def calendar(self) -> Calendar:
        return self.directory.calendar


@dataclass(frozen=True)
class Command:
    names: tuple[str, ...]
    handler: Handler
    audience: str  # staff | student | anyone
    summary: str
    roles: frozenset[str] = frozenset()  # empty: every staff role

    def admits(self, actor: Actor) -> bool:
        if self.audience == "student":
            return actor.is_student
        if self.audience == "staff":
            return actor.is_staff and (not self.roles or bool(self.roles & actor.roles))
        return True


@dataclass
class Registry:
    """The table of chat commands; `fallback` handles text that names no command."""

    commands: list[Command] = field(default_factory=list)
    fallback: Handler | None = None

    def command(self, *names: str, audience: str = "anyone", summary: str = "",
                roles: tuple[str, ...] = ()) -> Callable[[Handler], Handler]:
        def register(func: Handler) -> Handler:
            self.commands.append(Command(names, func, audience, summary, frozenset(roles)))
            return func
        return register

    def resolve(self, text: str) -> tuple[Command, str] | None:
        """The command whose name is the longest prefix of `text`, and the rest."""
        best: tuple[Command, str] | None = None
        best_len = 0
        for cmd in self.commands:
            for name in cmd.names:
                if text.startswith(name) and len(name) > best_len:
                    best, best_len = (cmd, text[len(name):].strip()), len(name)
        return best

    def visible_to(self, actor: Actor) -> list[Command]:
        return [c for c in self.commands if c.admits(actor)]


registry = Registry()


def clean_text(text: str) -> str:
    """NFKC, unified separators and single spaces per line, empty lines dropped."""
    lines = []
    for line in normalise(text).splitlines():
        for sep in ",;:、，；：\t\u3000":
            line = line.replace(sep, " ")
        line = " ".join(line.split())
        if line:
            lines.append(line)
    return "\n".join(lines)

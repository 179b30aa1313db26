"""Commands are registered with what they accept; dispatch finds the longest matching name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy.orm import Session

from core.config import Settings
from core.messages import IncomingMessage, Reply
from models.authz import Actor
from models.catalogue import Catalogue, normalise
from models.directory import Directory
from models.periods import Calendar
from models.risk.notices import Notify
from models.scores import RecordingWriter

Handler = Callable[[IncomingMessage, str, "Context"], Reply]


class UnitOfWork:
    """One message's database work: a session opened only if a handler asks for it.

    A handler that writes its own processed-message row (a recording, in the same statement as
    its entries) says so with `processed_written`, so the pipeline does not write a second one.
    """

    def __init__(self, sessions: Callable[[], Session], recordings: RecordingWriter | None = None) -> None:
        """`recordings`: where a recording is written in a statement of its own (PostgreSQL)."""
        self._sessions = sessions
        self.recordings = recordings
        self._session: Session | None = None
        self.processed_written = False
        self.queued_evaluation = False

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self._sessions()
        return self._session

    @property
    def opened(self) -> bool:
        return self._session is not None

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


@dataclass
class Context:
    """What a handler may use: the message's unit of work (its session, its transaction), the sender, the clock."""

    work: UnitOfWork
    actor: Actor
    catalogue: Catalogue
    today: date
    msg: IncomingMessage
    settings: Settings
    directory: Directory
    processed_key: str | None = None  # the key of the message's processed row (None: not deduplicated)
    # The channel answers within a time limit (WeChat's 5 s): slow work is queued, its result pushed.
    quick_reply: bool = False
    notify: Notify | None = None  # the words of the early warnings' pushes (the service's)

    @property
    def session(self) -> Session:
        return self.work.session

    @property
    def calendar(self) -> Calendar:
        return self.directory.calendar


@dataclass(frozen=True)
class Command:
    names: tuple[str, ...]
    handler: Handler
    # Who may use it, one or several joined by "|": staff | student | parent | follower (anyone writing
    # on the Official Account, bound or not) | bound (a follower bound as a student or a parent) |
    # anyone (everyone known: an unbound follower may only bind).
    audience: str
    summary: str  # the template of its line in 帮助, e.g. "chat/help/card.txt" ("": not listed)
    roles: frozenset[str] = frozenset()  # empty: every staff role

    def admits(self, actor: Actor) -> bool:
        """May `actor` use this command (its audience and roles)?"""
        return any(_admits(audience, self.roles, actor) for audience in self.audience.split("|"))


def _admits(audience: str, roles: frozenset[str], actor: Actor) -> bool:
    if audience == "student":
        return actor.is_student
    if audience == "staff":
        return actor.is_staff and (not roles or bool(roles & actor.roles))
    if audience == "parent":
        return actor.is_parent
    if audience == "follower":
        return actor.follower
    if audience == "bound":
        return actor.follower and not actor.is_unbound_follower
    if audience == "anyone":
        return not actor.is_unbound_follower
    raise ValueError(f"audience={audience!r}: not a known audience")


@dataclass
class Registry:
    """The table of chat commands; `fallback` handles text that names no command."""

    commands: list[Command] = field(default_factory=list)
    fallback: Handler | None = None

    def command(self, *names: str, audience: str = "anyone", summary: str = "",
                roles: tuple[str, ...] = ()) -> Callable[[Handler], Handler]:
        """Register the decorated handler under `names`; `summary` is its 帮助 line's template."""
        if summary and not (summary.startswith("chat/help/") and summary.endswith(".txt")):
            raise ValueError(f"summary={summary!r}: name a template under templates/chat/help/")

        for one in audience.split("|"):
            _admits(one, frozenset(), Actor(userid="", name=""))  # an unknown audience fails at import

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
        """The commands `actor` may use, in registration order."""
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

"""The running service: settings, database, catalogue, dedupe and clock, built once per process."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from zoneinfo import ZoneInfo

from core.claims import make_dedupe
from core.config import Settings
from models.catalogue import Catalogue, load_catalogue
from models.db import StatementConnections, make_engine, make_sessionmaker
from models.directory import DirectoryCache
from models.evaluation import Evaluated, Evaluator, evaluate_queued
from models.risk.clock import moment
from models.risk.notices import Notify
from models.risk.rules import RuleBook, rule_book
from models.scores import RecordingWriter


class Service:
    """Everything a channel needs to handle a message."""

    def __init__(self, settings: Settings,
                 clock: Callable[[], datetime] | None = None, background: bool = False,
                 notify: Notify | None = None) -> None:
        """`background`: evaluate recordings for early warnings on a thread (web) rather than at once.
        `notify`: the words of the warnings' messages (bot/service.make_service gives it; without
        it, a warning with something to say fails loudly)."""
        self.notify = notify
        self.settings = settings
        self.tz = ZoneInfo(self.settings.timezone)
        self.engine = make_engine(self.settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        # PostgreSQL: recordings are one statement on a connection of their own (models.scores.RecordingWriter).
        self.recordings = (RecordingWriter(StatementConnections(self.engine))
                           if self.engine.dialect.name == "postgresql" else None)
        self.catalogue: Catalogue = load_catalogue(self.settings.catalogue_path)
        self.dedupe = make_dedupe(self.settings.redis_url)
        self.directory = DirectoryCache(self.settings.roster_cache_seconds)
        self._clock = clock
        self.background = background  # a web process: replies within WeChat's 5 s, slow work later
        self.evaluator = Evaluator(self.evaluate_queued, background)

    def now(self) -> datetime:
        """Now in APP_TIMEZONE (tests may fix the clock)."""
        return self._clock() if self._clock else datetime.now(self.tz)

    def today(self) -> date:
        """Today in APP_TIMEZONE."""
        return self.now().date()

    def rules(self) -> RuleBook:
        """The early-warning rules in force (settings.risk_rules_path, its policy overrides)."""
        return rule_book(self.settings, self.catalogue)

    def evaluate_queued(self) -> Evaluated:
        """The early-warning check of every recording queued for it (models/evaluation.py)."""
        today = self.today()
        return evaluate_queued(self.sessions, self.catalogue, moment(today, self.tz), today, book=self.rules(),
                               notify=self.notify, tz=self.tz)

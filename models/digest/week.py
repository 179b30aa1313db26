"""The week a digest reports on (the ISO week just ended), and the day its card values are compared with."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from models.periods import Calendar, Term, week_bounds, week_key


@dataclass(frozen=True)
class DigestWeek:
    """The week reported on: Monday to Sunday, its ISO key, its semester, the Sunday before."""

    monday: date
    sunday: date
    key: str
    term: Term
    previous_sunday: date
    in_session: bool


def digest_week(today: date, cal: Calendar) -> DigestWeek:
    """The ISO week just ended before `today`'s week."""
    monday, sunday = week_bounds(today - timedelta(days=7))
    term = cal.term_for(sunday)
    session_days = any(t.start <= sunday and monday <= t.end for t in (cal.term_for(monday), term))
    return DigestWeek(monday, sunday, week_key(monday), term, sunday - timedelta(days=7), session_days)


def compared_with(week: DigestWeek, cal: Calendar) -> tuple[Term, date]:
    """The semester and day the week's card values are compared with, as the card does: the Sunday
    before, or in the first week of a semester the end of the previous one."""
    if week.previous_sunday >= week.term.start:
        return week.term, week.previous_sunday
    previous = cal.previous_term(week.term)
    return previous, previous.end

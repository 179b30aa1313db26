"""Recording score points by message, and undoing them.

A message is checked whole before anything is written: one bad line and nothing
is recorded, and the reply names every bad line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import select

from core.messages import IncomingMessage, Reply
from core.render import render
from handlers.registry import Context, registry
from models.authz import may_record, recordable_classes
from models.catalogue import LineError, ScorePoint, is_value_token, parse_value
from models.directory import ClassInfo, Directory, StudentInfo
from models.evaluation import needs_evaluation
from models.numbers import ROW_ID_MAX, is_digits, row_id, shown
from models.periods import PREVIOUS_WORDS, PeriodError, period_label, place
from models.risk.rules import rule_book
from models.schema import SchoolClass, ScoreEntry, Student
from models.scores import (
    FIRST_ID,
    LAST_ID,
    PlannedEntry,
    Processed,
    fill_ids,
    last_batch,
    record_entries,
    revoke,
)

TRAILING_NUMBER = re.compile(r"^(.*?[^\d.])([+-]?\d+(?:\.\d+)?%?)$")
WHOLE_CLASS = "全班"


@dataclass
class Roster:
    """The students and classes a message may name, from the process's roster snapshot."""

    directory: Directory
    students_by_no: dict[str, StudentInfo] = field(default_factory=dict)
    students_by_name: dict[str, list[StudentInfo]] = field(default_factory=dict)
    _shared: bool = False  # the dicts are the directory's own (one class): copy before adding to them

    @classmethod
    def load(cls, ctx: Context) -> Roster:
        return cls(ctx.directory)

    def load_students(self, ctx: Context, class_ids: set[int] | None) -> None:
        """Students of the classes in scope (None: the whole college)."""
        if not self.students_by_no and class_ids is not None and len(class_ids) == 1:
            # The everyday case, a teacher's one class: the directory's maps of that class, as they are.
            self.students_by_no, self.students_by_name = self.directory.class_roster(next(iter(class_ids)))
            self._shared = True
            return
        if self._shared:
            self.students_by_no = dict(self.students_by_no)
            self.students_by_name = {name: list(group) for name, group in self.students_by_name.items()}
            self._shared = False
        for s in self.directory.students_in(class_ids):
            self.students_by_no[s.student_no] = s
            self.students_by_name.setdefault(s.name, []).append(s)

    def class_of(self, token: str) -> ClassInfo | None:
        return self.directory.class_keys.get(token)


@dataclass(frozen=True)
class Summary:
    """What a recorded line says in 已记录 (templates/chat/recorded.txt): the point, the class (and
    its size, for 全班), the values as people read them ("张三 95%"), the exceptions of a 全班 line."""

    point: str
    values: list[str]
    klass: str | None = None
    size: int | None = None
    exceptions: list[str] = field(default_factory=list)


@dataclass
class LinePlan:
    """One line's entries, or its error."""

    number: int
    text: str
    point: ScorePoint | None = None
    entries: list[PlannedEntry] = field(default_factory=list)
    summary: Summary | None = None
    error: str | None = None


class LineParser:
    """Turns one line of a recording message into planned entries (or a LineError)."""

    def __init__(self, ctx: Context, roster: Roster) -> None:
        self.ctx = ctx
        self.roster = roster
        self._loaded_scopes: list[set[int] | None] = []

    def _ensure_students(self, scope: set[int] | None) -> None:
        if scope in self._loaded_scopes or None in self._loaded_scopes:
            return
        self.roster.load_students(self.ctx, scope)
        self._loaded_scopes.append(scope)

    def parse(self, name: str, points: dict[str, ScorePoint],
              rest: str) -> tuple[ScorePoint, list[PlannedEntry], Summary]:
        tokens = rest.split()
        previous = None
        for word, unit in PREVIOUS_WORDS.items():
            if word in tokens:
                tokens.remove(word)
                previous = unit
        if not tokens:
            raise LineError("line/no_subject")
        klass = self.roster.class_of(tokens[0])
        if klass is not None:
            if len(tokens) > 1 and tokens[1] == WHOLE_CLASS:
                return self._whole_class(name, points, klass, tokens[2:], previous)
            return self._class_point(name, points, klass, tokens[1:], previous)
        return self._students(name, points, tokens, previous)

    # -- targets -------------------------------------------------------------

    def _individual(self, name: str, points: dict[str, ScorePoint]) -> ScorePoint:
        point = points.get("个人")
        if point is None:
            raise LineError("line/class_point", name=name)
        return point

    def _placement(self, point: ScorePoint, klass: ClassInfo, previous: str | None):  # noqa: ANN202
        try:
            return place(point.period, self.ctx.today, self.ctx.calendar, previous, klass.grade)
        except PeriodError as exc:
            raise LineError(exc.problem.code, **exc.problem.fields) from exc

    def _class_point(self, name: str, points: dict[str, ScorePoint], klass: ClassInfo,
                     tokens: list[str], previous: str | None) -> tuple[ScorePoint, list[PlannedEntry], Summary]:
        point = points.get("班级")
        if point is None:
            raise LineError("line/individual_point", name=name, klass=klass.code)
        if point.derived is not None:
            source = self.ctx.catalogue.by_code[point.derived.of]
            raise LineError("line/derived", point=point.short, source=source.short, klass=klass.code,
                            hint=source.short == point.short or name in source.aliases)
        if not may_record(self.ctx.actor, point, klass.id):
            raise LineError("line/not_recorder", point=point.short, klass=klass.name, recorders=point.recorders)
        if len(tokens) > 1:
            raise LineError("line/one_value")
        value = parse_value(point, tokens[0] if tokens else None)
        at = self._placement(point, klass, previous)
        entry = PlannedEntry(point, None, klass.id, klass.name, value, at.occurred_on, at.period_key,
                             at.semester_key)
        return point, [entry], Summary(point.short, [point.display_value(value)], klass.name)

    def _resolve_student(self, token: str, scope: set[int] | None, point: ScorePoint) -> StudentInfo:
        self._ensure_students(scope)
        if token in self.roster.students_by_no:
            return self.roster.students_by_no[token]
        matches = self.roster.students_by_name.get(token, [])
        if scope is not None:
            matches = [s for s in matches if s.class_id in scope]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise LineError("line/ambiguous", token=token,
                            options=[(s.student_no, s.school_class.name) for s in matches])
        exists = self.ctx.session.scalar(
            select(Student).where((Student.name == token) | (Student.student_no == token)).limit(1))
        if exists is not None:
            raise LineError("line/out_of_scope", token=token, point=point.short)
        raise LineError("line/student_not_found", token=token)

    def _students(self, name: str, points: dict[str, ScorePoint], tokens: list[str],
                  previous: str | None) -> tuple[ScorePoint, list[PlannedEntry], Summary]:
        point = self._individual(name, points)
        scope = recordable_classes(self.ctx.actor, point)
        if scope is not None and not scope:
            raise LineError("line/not_recorder", point=point.short, klass=None, recorders=point.recorders)
        pairs = self._pairs(point, tokens, scope)
        entries, shown, seen = [], [], set()
        for student, raw in pairs:
            if student.id in seen and not point.accumulates:
                raise LineError("line/twice", student=student.name)
            seen.add(student.id)
            if not may_record(self.ctx.actor, point, student.class_id):
                raise LineError("line/not_recorder_of", student=student.name, point=point.short)
            value = parse_value(point, raw)
            at = self._placement(point, student.school_class, previous)
            entries.append(PlannedEntry(point, student.id, None, student.name, value, at.occurred_on,
                                        at.period_key, at.semester_key))
            shown.append(f"{student.name} {point.display_value(value)}")
        return point, entries, Summary(point.short, shown)

    def _pairs(self, point: ScorePoint, tokens: list[str],
               scope: set[int] | None) -> list[tuple[StudentInfo, str | None]]:
        """Read `<学生> [<值>] <学生> [<值>] …`, splitting 张三95 into 张三 and 95."""
        self._ensure_students(scope)
        pairs: list[tuple[StudentInfo, str | None]] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if is_value_token(point, token) and token not in self.roster.students_by_no:
                if pairs and pairs[-1][1] is None:
                    pairs[-1] = (pairs[-1][0], token)
                    i += 1
                    continue
                raise LineError("line/value_first", token=token)
            glued = TRAILING_NUMBER.match(token)
            try:
                student = self._resolve_student(token, scope, point)
                value = None
            except LineError:
                if not glued:
                    raise
                student = self._resolve_student(glued.group(1), scope, point)
                value = glued.group(2)
            if value is None and i + 1 < len(tokens) and self._reads_as_value(point, tokens[i + 1]):
                value = tokens[i + 1]
                i += 1
            pairs.append((student, value))
            i += 1
        return pairs

    def _reads_as_value(self, point: ScorePoint, token: str) -> bool:
        """After a student: a value, unless it names a student (so 张三 也许 reports a bad value)."""
        if token in self.roster.students_by_no:
            return False
        if is_value_token(point, token):
            return True
        glued = TRAILING_NUMBER.match(token)
        names = self.roster.students_by_name
        return token not in names and not (glued and glued.group(1) in names)

    def _whole_class(self, name: str, points: dict[str, ScorePoint], klass: ClassInfo,
                     tokens: list[str], previous: str | None) -> tuple[ScorePoint, list[PlannedEntry], Summary]:
        point = self._individual(name, points)
        if not may_record(self.ctx.actor, point, klass.id):
            raise LineError("line/not_recorder", point=point.short, klass=klass.name, recorders=point.recorders)
        default = None
        if tokens and is_value_token(point, tokens[0]):
            default, tokens = tokens[0], tokens[1:]
        base = parse_value(point, default)
        exceptions = self._pairs(point, tokens, {klass.id})
        except_ids = {s.id: raw for s, raw in exceptions}
        for s, raw in exceptions:
            if s.class_id != klass.id:
                raise LineError("line/not_in_class", student=s.name, klass=klass.name)
            if raw is None:
                raise LineError("line/no_value", student=s.name)
        at = self._placement(point, klass, previous)
        students = self.ctx.directory.students_by_class.get(klass.id, [])
        if not students:
            raise LineError("line/no_students", klass=klass.name)
        entries = []
        for s in students:
            value = parse_value(point, except_ids[s.id]) if s.id in except_ids else base
            entries.append(PlannedEntry(point, s.id, None, s.name, value, at.occurred_on, at.period_key,
                                        at.semester_key))
        return point, entries, Summary(
            point.short, [point.display_value(base)], klass.name, len(students),
            [f"{s.name} {point.display_value(parse_value(point, raw))}" for s, raw in exceptions])


def split_previous_word(line: str) -> tuple[str, str]:
    """`上周 全勤率 …` → ("上周", "全勤率 …"): the period word may lead the line."""
    for word in sorted(PREVIOUS_WORDS, key=len, reverse=True):
        if line.startswith(word):
            return word, line[len(word):].strip()
    return "", line


def plan_message(ctx: Context, text: str) -> list[LinePlan]:
    """Check every line; each plan has entries or an error."""
    roster = Roster.load(ctx)
    parser = LineParser(ctx, roster)
    plans = []
    last: tuple[str, dict[str, ScorePoint]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        plan = LinePlan(number, line)
        previous_word, line_body = split_previous_word(line)
        match = ctx.catalogue.match_prefix(line_body)
        if match is not None:
            name, points = match
            rest = f"{previous_word} {line_body[len(name):]}"
            last = match
        elif last is not None:
            name, points = last  # a continuation line: same point as the line above
            rest = line
        else:
            plan.error = render("errors/line/unknown.txt")
            plans.append(plan)
            continue
        try:
            plan.point, plan.entries, plan.summary = parser.parse(name, points, rest)
        except LineError as exc:
            plan.error = render("errors/problem.txt", p=exc.problem)
        plans.append(plan)
    return plans


def record_message(msg: IncomingMessage, text: str, ctx: Context) -> Reply:
    """The fallback handler: a message that starts with a point name records it."""
    if ctx.catalogue.match_prefix(split_previous_word(text)[1]) is None:
        return Reply(render("chat/unknown_command.txt", text=text.splitlines()[0][:20]))
    if not ctx.actor.is_staff:
        return Reply(render("chat/student_cannot_record.txt"))
    plans = plan_message(ctx, text)
    bad = [p for p in plans if p.error]
    if bad:
        return Reply(render("chat/record_rejected.txt", bad=bad, total=len(plans)))
    planned = [e for p in plans for e in p.entries]
    periods = sorted({(p.point.period, e.period_key) for p in plans for e in p.entries})
    reply = render("chat/recorded.txt", plans=plans, count=len(planned), first=FIRST_ID, last=LAST_ID,
                   periods=[period_label(period, key) for period, key in periods])
    work = ctx.work
    processed = Processed(ctx.processed_key, msg.sender, reply) if ctx.processed_key else None
    evaluate = needs_evaluation(rule_book(ctx.settings, ctx.catalogue), ctx.catalogue,
                                planned)  # early warnings: checked after the commit
    # PostgreSQL: one autocommitted statement; elsewhere the pipeline commits the session.
    write = work.recordings.record if work.recordings else partial(record_entries, ctx.session)
    recorded = write(ctx.actor.audit_name, ctx.actor.staff_id, planned, text=msg.text, source=msg.channel,
                     source_msg=msg.msg_key, evaluate=evaluate, processed=processed)
    work.processed_written = processed is not None
    work.queued_evaluation = evaluate
    return Reply(fill_ids(reply, recorded.first, recorded.last))


registry.fallback = record_message


@registry.command("撤销", "撤回", audience="staff", summary="chat/help/undo.txt")
def undo(msg: IncomingMessage, args: str, ctx: Context) -> Reply:
    """Take back the sender's last recording, or one entry #N."""
    session, actor = ctx.session, ctx.actor
    assert actor.staff_id is not None
    number = args.lstrip("#").strip()
    if number:
        if not is_digits(number):
            return Reply(render("chat/undo_usage.txt"))
        entry_id = row_id(number)
        if entry_id is None:
            return Reply(render("chat/bad_number.txt", number=shown(number), max=ROW_ID_MAX, command="撤销"))
        entry = session.get(ScoreEntry, entry_id)
        if entry is None or entry.recorder_id != actor.staff_id:
            return Reply(render("chat/undo_not_found.txt", number=number))
        if entry.revoked_at is not None:
            return Reply(render("chat/undo_already.txt", number=number))
        entries = [entry]
    else:
        batch = last_batch(session, actor.staff_id)
        if batch is None:
            return Reply(render("chat/undo_nothing.txt"))
        entries = list(session.scalars(select(ScoreEntry).where(
            ScoreEntry.batch_id == batch.id, ScoreEntry.revoked_at.is_(None))))
    entries = revoke(session, actor.audit_name, actor.staff_id, entries, msg.msg_key)
    if not entries:  # another 撤销 of the same entries committed first
        return Reply(render("chat/undo_already.txt", number=number) if number else render("chat/undo_nothing.txt"))
    return Reply(render("chat/undone.txt", lines=_describe(ctx, entries), count=len(entries)))


def _describe(ctx: Context, entries: list[ScoreEntry]) -> list[str]:
    """Short lines like "全勤率 张三 95%" for a reply (whole classes folded into one line)."""
    by_point: dict[str, list[ScoreEntry]] = {}
    for e in entries:
        by_point.setdefault(e.point_code, []).append(e)
    out = []
    for code, group in by_point.items():
        point = ctx.catalogue.by_code[code]
        if len(group) > 6:
            out.append(render("chat/undo_line.txt", point=point.short, count=len(group), values=[]))
            continue
        names = []
        for e in group:
            who = ctx.session.get(Student, e.student_id).name if e.student_id else \
                ctx.session.get(SchoolClass, e.class_id).name
            names.append(f"{who} {point.display_value(e.value)}")
        out.append(render("chat/undo_line.txt", point=point.short, count=None, values=names))
    return out
